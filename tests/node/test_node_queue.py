"""The node's queue and admission without a PACS: what is kept, what is refused, how delivery gives up.

A real SQLite file on disk, real DICOM films (pydicom), the real Storage SCP (pynetdicom) on a free port,
and the real deliverer against a port where nothing listens.
"""

import io
import logging

import numpy as np
import pydicom
import pytest
from builders import make_dx_film
from pacs_harness import free_port, new_uid

from cxr_core.imaging.dicom_out import ScreeningResult, secondary_capture, structured_report
from cxr_core.node import scp
from cxr_core.node.admission import refusal_reason
from cxr_core.node.queue import DELIVERED, FAILED, RECEIVED, SCREENED, SKIPPED, FilmQueue
from cxr_core.node.worker import Destination, Worker

PIXELS = np.random.default_rng(1).integers(0, 255, (64, 64)).astype(np.uint8)


def film(**options) -> bytes:
    return make_dx_film(PIXELS, study_uid=options.pop("study_uid", new_uid()), sop_uid=new_uid(), **options)


def header(data: bytes):
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({}, None),
        ({"modality": "CR"}, None),
        ({"view": "AP", "body_part": ""}, None),
        ({"view": "LL"}, "lateral view (only frontal PA/AP chest films are screened)"),
        ({"view": "RL"}, "lateral view (only frontal PA/AP chest films are screened)"),
        ({"intent": "FOR PROCESSING"}, "For Processing image (raw detector data, not meant for reading)"),
        ({"body_part": "HAND"}, "body part HAND, not chest"),
    ],
)
def test_admission_names_the_kind_of_film_it_refuses(options, reason):
    assert refusal_reason(header(film(**options))) == reason


def test_other_modalities_are_refused_by_class():
    ct = header(film())
    ct.SOPClassUID, ct.Modality = "1.2.840.10008.5.1.4.1.1.2", "CT"
    assert refusal_reason(ct) == "not a CR/DX radiograph (modality CT)"


def test_a_film_is_kept_once_and_survives_a_reopened_queue(tmp_path):
    queue = FilmQueue(tmp_path)
    data = film()
    uid = str(header(data).SOPInstanceUID)
    assert queue.receive(uid, data, sop_class="x", study_uid="s", calling_ae="ORTHANC")
    assert not queue.receive(uid, data, sop_class="x", study_uid="s", calling_ae="ORTHANC")  # sent twice
    reopened = FilmQueue(tmp_path)  # a new process after a crash
    waiting = reopened.waiting(10)
    assert [row["sop_uid"] for row in waiting] == [uid] and waiting[0]["state"] == RECEIVED
    assert reopened.read_film(waiting[0]) == data
    assert reopened.counts() == {"received": 1, "screened": 0, "delivered": 0, "failed": 0, "skipped": 0}


def test_the_scp_keeps_screenable_films_counts_refusals_and_logs_no_identity(tmp_path, caplog):
    from pynetdicom import AE
    from pynetdicom.sop_class import (
        DigitalXRayImageStorageForPresentation,
        DigitalXRayImageStorageForProcessing,
    )

    queue = FilmQueue(tmp_path)
    port = free_port()
    server = scp.start(queue, ae_title="CXRTB", bind="127.0.0.1", port=port, allowed_calling=["ORTHANC"])
    good, lateral, raw = film(), film(view="LL"), film(intent="FOR PROCESSING")
    try:
        with caplog.at_level(logging.INFO, logger="cxr_core.node"):
            stranger = AE(ae_title="STRANGER")
            stranger.add_requested_context(DigitalXRayImageStorageForPresentation)
            refused = stranger.associate("127.0.0.1", port, ae_title="CXRTB")
            assert not refused.is_established  # a calling AE title not on the list is turned away
            ae = AE(ae_title="ORTHANC")
            ae.add_requested_context(DigitalXRayImageStorageForPresentation)
            ae.add_requested_context(DigitalXRayImageStorageForProcessing)
            assoc = ae.associate("127.0.0.1", port, ae_title="CXRTB")
            assert assoc.is_established
            for data in (good, lateral, raw, good):
                assert assoc.send_c_store(pydicom.dcmread(io.BytesIO(data))).Status == 0x0000
            assoc.release()
    finally:
        server.shutdown()
    rows = {row["sop_uid"]: row for row in queue.rows()}
    assert len(rows) == 3  # the film sent twice is one row
    assert rows[str(header(good).SOPInstanceUID)]["state"] == RECEIVED
    assert rows[str(header(lateral).SOPInstanceUID)]["state"] == SKIPPED
    assert queue.skip_reasons() == {
        "lateral view (only frontal PA/AP chest films are screened)": 1,
        "For Processing image (raw detector data, not meant for reading)": 1,
    }
    assert pydicom.dcmread(io.BytesIO(queue.read_film(rows[str(header(good).SOPInstanceUID)]))).PatientID
    assert "not screened: lateral view" in caplog.text and "already received" in caplog.text
    assert "Doe" not in caplog.text and "MRN-0042" not in caplog.text


def screened_film(queue: FilmQueue) -> int:
    """A received film with its real SR and SC written, as the screener leaves it."""
    data = film()
    ds = header(data)
    queue.receive(
        str(ds.SOPInstanceUID), data, sop_class=str(ds.SOPClassUID), study_uid="s", calling_ae="ORTHANC"
    )
    row = queue.waiting(1)[0]
    outcome = ScreeningResult(0.2, 0.5, False, "No TB signs detected", "v1")
    identity = {"StudyInstanceUID": ds.StudyInstanceUID}
    sc = secondary_capture(np.zeros((32, 32, 3), np.uint8), identity, "No TB signs", model_version="v1")
    result = {
        "probability": 0.2, "label": "Normal", "threshold": 0.5, "model_version": "v1", "site": None,
        "evidence_in_lungs": None, "warnings": None, "sr_uid": "1.2", "sc_uid": "1.3",
    }  # fmt: skip
    queue.screened(row["id"], result, structured_report(ds, outcome), sc)
    return row["id"]


def test_delivery_backs_off_then_shows_failed_to_deliver_and_can_be_put_back(tmp_path):
    queue = FilmQueue(tmp_path)
    film_id = screened_film(queue)
    nobody = Destination("ORTHANC", "127.0.0.1", free_port())  # nothing listens there
    worker = Worker(
        queue, serving=None, destination=nobody, retry_first=0.0, retry_max=0.0, give_up_after=3600
    )
    assert worker.deliver_due()
    row = queue.rows()[0]
    assert row["state"] == SCREENED and row["attempts"] == 1 and "did not accept" in row["last_error"]
    backing_off = Worker(queue, None, nobody, retry_first=30.0, retry_max=60.0, give_up_after=3600)
    assert backing_off.deliver_due()
    assert not backing_off.deliver_due()  # the next attempt waits out the back-off
    assert queue.rows()[0]["next_attempt_at"] > queue.rows()[0]["screened_at"] + 25
    giving_up = Worker(queue, None, nobody, retry_first=0.0, retry_max=0.0, give_up_after=0.0)
    queue.retry_failed()
    with queue._connection() as db:  # the back-off is over
        db.execute("UPDATE films SET next_attempt_at = 0")
    assert giving_up.deliver_due()
    assert queue.counts()[FAILED] == 1 and queue.rows()[0]["id"] == film_id
    assert not giving_up.deliver_due()  # a failed film is not tried again by itself...
    assert queue.retry_failed() == 1  # ...until someone puts it back (`node --retry-failed`)
    assert queue.counts()[SCREENED] == 1 and queue.counts()[DELIVERED] == 0


def test_a_result_damaged_before_it_was_sent_is_made_again_and_an_intact_one_delivered(tmp_path):
    queue = FilmQueue(tmp_path / "node")
    damaged, intact = screened_film(queue), screened_film(queue)
    sc_file = queue.results_dir / f"{damaged}.sc.dcm"
    sc_file.write_bytes(sc_file.read_bytes()[:100])  # a power cut before the unsynced write reached the disk
    receiver = FilmQueue(tmp_path / "pacs")  # a real Storage SCP takes the delivery
    port = free_port()
    server = scp.start(receiver, ae_title="ORTHANC", bind="127.0.0.1", port=port, allowed_calling=["CXRTB"])
    try:
        worker = Worker(queue, None, Destination("ORTHANC", "127.0.0.1", port, calling_ae="CXRTB"))
        assert worker.deliver_due()
    finally:
        server.shutdown()
    states = {row["id"]: row["state"] for row in queue.rows()}
    assert states == {damaged: RECEIVED, intact: DELIVERED}
    assert worker.arrived.is_set()  # the screener is woken to make the result again
    assert len(receiver.rows()) == 2  # the intact film's SR and SC arrived (refused there: not CR/DX films)
