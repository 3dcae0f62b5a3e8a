"""Setting up at a clinic in the dashboard: validate on local films, create and switch on a site profile,
and record confirmed outcomes from the Screen page."""


import pytest
import test_app_retrain as retrain
import test_app_screen as shared
from builders import clinic_folder
from conftest import shared_records
from gatekeeping import PASSWORD
from streamlit.testing.v1 import AppTest
from test_app_retrain import button, unlock
from test_app_screen import open_page

from cxr_core.pipeline.outcomes import local_set_counts
from cxr_core.registry import audit
from cxr_core.registry.sites import SiteProfiles

pytestmark = pytest.mark.slow
seed, dashboard, admin = shared.seed, shared.dashboard, retrain.admin  # fixtures


@pytest.fixture
def clinic_films(tmp_path, shared_cxr):
    """Forty confirmed films of one Indian hospital (DA) standing in for a clinic's own."""
    rows = shared_records("da", "Normal")[:20] + shared_records("da", "Tuberculosis")[:20]
    return clinic_folder(tmp_path / "clinic", rows, shared_cxr)


def open_site() -> AppTest:
    return open_page("pages/site.py", 300)


def test_validate_create_a_profile_and_switch_it_on(admin, clinic_films):
    at = unlock(open_site(), PASSWORD)
    at.text_input[0].set_value(str(clinic_films))
    button(at, "Score these films").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = {m.label: m.value for m in at.metric}
    assert shown["Films scored"] == "40" and shown["ROC AUC here"] != "n/a"

    name_input = [t for t in at.text_input if t.label == "Site name"][0]
    name_input.set_value("clinic-da")
    button(at, "Create the profile").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Profile clinic-da saved" in s.value for s in at.success)
    assert any("Weak evidence" in m.value for m in at.markdown)  # 20 films per class is said to be weak
    sites = SiteProfiles(admin.registry.root)
    assert sites.names() == ["clinic-da"] and sites.active() is None

    at.run()  # the page lists the new profile
    at.selectbox[0].set_value("clinic-da")
    button(at, "Apply").click()
    at.run()
    assert sites.active_name() == "clinic-da"
    assert [e["action"] for e in audit.read(admin.registry.root)][:2] == ["site_activate", "site_profile"]

    screen = shared.upload(shared.open_screen(), (shared.TB_XRAY.name, shared.TB_XRAY.read_bytes()))
    threshold = sites.load("clinic-da")["threshold"]
    assert any("clinic-da" in c.value for c in screen.caption)
    assert screen.dataframe[0].value.iloc[0]["threshold"] == pytest.approx(threshold, abs=1e-4)


def test_a_confirmed_outcome_is_recorded_from_the_screen_page(admin):
    before = local_set_counts()
    at = shared.upload(shared.open_screen(), (shared.TB_XRAY.name, shared.TB_XRAY.read_bytes()))
    assert not [b for b in at.button if b.key == "outcome_save"]  # an administrator's write: login first
    unlock(at, PASSWORD)
    at.radio(key="outcome_choice").set_value("tb")
    at.button(key="outcome_save").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("local set now holds" in s.value for s in at.success)
    assert local_set_counts()["Tuberculosis"] == before["Tuberculosis"] + 1
