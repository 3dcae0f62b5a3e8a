"""The dashboard's admin side through AppTest: recording an outcome needs a named administrator, the session
locks itself when idle, failed logins reach the audit trail, and the Model page says whether the chain holds."""

import time

import pytest
import test_app_screen as shared
from gatekeeping import ADMIN, PASSWORD, admin_account
from streamlit.testing.v1 import AppTest
from test_app_screen import TB_XRAY, open_page, open_screen, upload

from cxr_core import auth
from cxr_core.pipeline.outcomes import local_set_counts, local_set_dir
from cxr_core.registry import audit

pytestmark = pytest.mark.slow
seed, dashboard = shared.seed, shared.dashboard  # fixtures: a private copy of a really trained registry


def log_in(at: AppTest, user: str, password: str) -> AppTest:
    at.text_input(key="admin_user").set_value(user)
    at.text_input(key="admin_password").set_value(password)
    next(b for b in at.button if b.label == "Unlock").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def save_buttons(at: AppTest) -> list:
    return [b for b in at.button if b.label == "Save the outcome"]


def test_recording_an_outcome_needs_a_named_administrator(dashboard, monkeypatch, tmp_path):
    admin_account(monkeypatch, tmp_path)
    at = upload(open_screen(), (TB_XRAY.name, TB_XRAY.read_bytes()))
    assert not save_buttons(at)  # anyone could label any upload before
    assert not [r for r in at.radio if r.key == "outcome_choice"]

    log_in(at, ADMIN, "not-the-password-at-all")
    assert any("Wrong user name or password" in e.value for e in at.error)
    assert not save_buttons(at)
    auth.reset_throttle()
    log_in(at, ADMIN, PASSWORD)
    at.radio(key="outcome_choice").set_value("tb")
    save_buttons(at)[0].click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert local_set_counts(local_set_dir()) == {"Tuberculosis": 1, "Normal": 0}
    entries = audit.read(dashboard.root)
    recorded = [e for e in entries if e["action"] == "outcome_recorded"]
    assert len(recorded) == 1 and recorded[0]["actor"].startswith(f"dashboard:{ADMIN}")
    failed = [e for e in entries if e["action"] == "login_failed"]
    assert len(failed) == 1 and failed[0]["user"] == ADMIN
    assert audit.verify(dashboard.root).ok


def test_an_idle_admin_session_locks_itself(dashboard, monkeypatch, tmp_path):
    admin_account(monkeypatch, tmp_path)
    monkeypatch.setenv(auth.ENV_IDLE_MINUTES, "0.02")  # 1.2 seconds
    at = log_in(open_page("pages/retrain.py"), ADMIN, PASSWORD)
    assert [b for b in at.button if b.label == "Lock"]
    time.sleep(1.5)
    at.run()
    assert not [b for b in at.button if b.label.startswith(("Start", "Promote", "Roll back", "Lock"))]
    assert any("locked after a period without use" in w.value for w in at.warning)


def test_the_shipped_example_password_is_refused_with_a_message(dashboard, monkeypatch):
    monkeypatch.setenv(auth.ENV_PASSWORD, "change-me-dashboard-admin-password")  # .env.example's value
    at = open_page("pages/retrain.py")
    assert any("no longer accepted" in e.value for e in at.error)
    assert not [t for t in at.text_input if t.key == "admin_password"]  # no form to type it into


def test_the_model_page_shows_whether_the_audit_chain_holds(dashboard):
    audit.record("register", root=dashboard.root, version="v-copy", actor="cli:root")
    audit.record("register", root=dashboard.root, version="v-copy", actor="cli:root")
    at = open_page("pages/model.py", 60)
    assert any("audit chain holds" in s.value for s in at.success)
    path = audit.audit_path(dashboard.root)
    path.write_bytes(path.read_bytes().replace(b"cli:root", b"cli:mallory", 1))
    at = open_page("pages/model.py", 60)
    broken = [e.value for e in at.error if "audit chain is broken" in e.value]
    assert broken, [e.value for e in at.error]
