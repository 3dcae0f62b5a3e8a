"""The "Films from the PACS" page on a real node queue (SQLite + kept films), in Streamlit's AppTest.

The queue is filled the way the node fills it (receive -> screened with real SR/SC -> delivered, a
refusal, a delivery that gave up), and the page is opened in the real app with the project's model.
"""

from pathlib import Path

import numpy as np
import pytest
from builders import make_dx_film
from pacs_harness import new_uid
from PIL import Image
from streamlit.testing.v1 import AppTest

from cxr_core.imaging.dicom_out import ScreeningResult, secondary_capture, structured_report
from cxr_core.node.queue import FilmQueue

pytestmark = pytest.mark.slow
APP = str(Path(__file__).resolve().parents[2] / "app.py")
LATERAL = "lateral view (only frontal PA/AP chest films are screened)"


def keep(queue: FilmQueue, pixels, **options) -> int:
    import io

    import pydicom

    data = make_dx_film(pixels, study_uid=new_uid(), sop_uid=new_uid(), **options)
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    queue.receive(
        str(header.SOPInstanceUID),
        data,
        sop_class=str(header.SOPClassUID),
        study_uid="s",
        calling_ae="ORTHANC",
    )
    return queue.waiting(100)[-1]["id"], header


def screen(queue: FilmQueue, film_id: int, header, probability: float) -> None:
    outcome = ScreeningResult(probability, 0.5, probability >= 0.5, "TB suspected", "v-node")
    sc = secondary_capture(
        np.zeros((8, 8, 3), np.uint8), {"StudyInstanceUID": "1.2"}, "r", model_version="v-node"
    )
    result = {
        "probability": probability, "label": "Tuberculosis" if probability >= 0.5 else "Normal", "threshold": 0.5,
        "model_version": "v-node", "site": None, "evidence_in_lungs": 0.9, "warnings": None, "sr_uid": "1", "sc_uid": "2",
    }  # fmt: skip
    queue.screened(film_id, result, structured_report(header, outcome), sc)


@pytest.fixture
def node_queue(tmp_path, monkeypatch, real_xray_path):
    monkeypatch.setenv("CXR_NODE_DIR", str(tmp_path / "node"))
    queue = FilmQueue(tmp_path / "node")
    pixels = np.array(Image.open(real_xray_path).convert("L"))
    delivered, header = keep(queue, pixels)
    screen(queue, delivered, header, 0.81)
    queue.delivered(delivered)
    keep(queue, pixels)  # waiting
    lateral = make_dx_film(pixels, study_uid=new_uid(), view="LL")
    queue.skip_on_arrival(new_uid(), LATERAL, sop_class="x", study_uid="s", calling_ae="ORTHANC")
    assert lateral  # the refused film itself is not kept
    failed, header = keep(queue, pixels)
    screen(queue, failed, header, 0.2)
    queue.delivery_failed(
        failed, "the PACS did not accept the association", first=1, longest=1, give_up_after=0
    )
    return queue


def open_node_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page("pages/node.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_worklist_shows_every_state_newest_first_and_opens_the_film_in_the_viewer(node_queue):
    at = open_node_page()
    metrics = {m.label: m.value for m in at.metric}
    assert {k: metrics[k] for k in ("Waiting", "Sending", "Delivered", "Failed to deliver", "Not screened")} == {
        "Waiting": "1", "Sending": "0", "Delivered": "1", "Failed to deliver": "1", "Not screened": "1",
    }  # fmt: skip
    table = at.dataframe[0].value
    assert list(table["film"]) == [4, 3, 2, 1]
    assert list(table["status"]) == [
        "Failed to deliver", "Not screened", "Received, waiting to be screened", "Result in the PACS",
    ]  # fmt: skip
    assert table["problem"][0] == "the PACS did not accept the association (1 attempt)"
    assert table["problem"][1] == LATERAL
    assert table["tb_probability"][3] == pytest.approx(0.81)
    assert "patient_name" not in table.columns  # identity only under the switch
    assert any(LATERAL in caption.value.replace("\\", "") for caption in at.caption)

    # the newest film is open, in the Screen page's viewer (its controls and its result panel)
    assert at.selectbox(key="node_film").value == 4
    assert any(m.value.replace("\\", "") == "#### PACS film #4" for m in at.markdown)
    assert at.toggle(key="show_heatmap").value is True and at.slider(key="wl_level").value == 128
    assert [m.label for m in at.metric].count("TB probability") == 1
    assert any("v-node" in info.value for info in at.info)  # the PACS got another model's result

    at.checkbox(key="include_ids").check().run()
    table = at.dataframe[0].value
    assert list(table["patient_name"]) == ["Doe, Jane", "", "Doe, Jane", "Doe, Jane"]
    assert any("Doe, Jane" in m.value for m in at.markdown)  # and on the film card

    at.selectbox(key="node_film").set_value(3).run()
    assert not at.exception
    assert any("was not screened" in w.value and "lateral view" in w.value for w in at.warning)


def test_the_page_says_how_to_start_the_node_when_there_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_NODE_DIR", str(tmp_path / "no-node"))
    at = open_node_page()
    assert any("python -m cxr_core node" in info.value for info in at.info)
    assert not at.dataframe


def test_odd_session_state_is_ignored(node_queue):
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["node_memo"] = "not a memo"
    at.session_state["node_film"] = ["a", "list"]
    at.session_state["node_worklist_films"] = 42
    at.run()
    at.switch_page("pages/node.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="node_film").value == 4
