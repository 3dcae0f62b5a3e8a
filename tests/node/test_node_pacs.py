"""The node against a real Orthanc (Debian's package), both started by ``scripts/pacs.sh up``.

Films go into Orthanc as a modality's would; Orthanc's Lua script forwards CR/DX to the node; the node
stores its SR and Secondary Capture back. Proven here: the results land in the film's own study, the
SR's probability is the CLI's ``predict`` for the same file, refused films are counted with their
reason (and no name in the log), a node killed mid-batch loses and duplicates nothing, results wait
out a PACS that is down, and dciodvfy finds no error in either object. One PACS for the module, with
small batches and short retry delays so it runs in a few minutes.
"""

import io
import json
import shutil
import signal
import subprocess
import time

import pydicom
import pytest
from pacs_harness import PYTHON, Pacs, film_bytes, new_uid, orthanc_missing, unseen_films
from tools import missing

from cxr_core.imaging.dicom_out import COMPREHENSIVE_SR, SECONDARY_CAPTURE
from cxr_core.node.queue import DELIVERED, SKIPPED

pytestmark = pytest.mark.slow

PROBABILITY = ("122157", "DCM")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    if problem := orthanc_missing():
        missing(problem)
    instance = Pacs(
        tmp_path_factory.mktemp("pacs"),
        node_args="--set node.batch_size=2 --set node.retry_first_seconds=0.5 --set node.retry_max_seconds=2",
    )
    try:
        instance.up()
        yield instance
    finally:
        instance.down()


@pytest.fixture(scope="module")
def films(shared_cxr, tmp_path_factory):
    """Nineteen unseen real films, each its own DX study, written as .dcm files (the CLI reads the same)."""
    folder = tmp_path_factory.mktemp("films")
    made = []
    for index, path in enumerate(unseen_films(shared_cxr, 19)):
        study, sop = new_uid(), new_uid()
        data = film_bytes(path, study, sop)
        (folder / f"film{index:02d}.dcm").write_bytes(data)
        made.append(
            {"study": study, "sop": sop, "data": data, "file": folder / f"film{index:02d}.dcm", "png": path}
        )
    return made


def sr_number(ds, code) -> float:
    for item in ds.ContentSequence:
        name = item.ConceptNameCodeSequence[0]
        if (name.CodeValue, name.CodingSchemeDesignator) == code:
            return float(item.MeasuredValueSequence[0].NumericValue)
    raise AssertionError(f"no {code} item in the SR")


def dciodvfy_errors(data: bytes, tmp_path, name: str) -> list[str]:
    if shutil.which("dciodvfy") is None:
        missing("dciodvfy (Debian dicom3tools) is not installed")
    path = tmp_path / name
    path.write_bytes(data)
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def all_delivered(count):
    return lambda rows: len(rows) == count and all(row["state"] == DELIVERED for row in rows)


def test_films_in_orthanc_come_back_as_sr_and_sc_in_their_study(pacs, films, tmp_path):
    batch = films[:4]
    lateral_study, lateral_sop, raw_study, raw_sop = new_uid(), new_uid(), new_uid(), new_uid()
    lateral = film_bytes(films[18]["png"], lateral_study, lateral_sop, view="LL")
    for_processing = film_bytes(films[18]["png"], raw_study, raw_sop, intent="FOR PROCESSING")
    for film in batch:
        pacs.upload(film["data"])
    pacs.upload(lateral)
    pacs.upload(for_processing)
    rows = pacs.wait_rows([f["sop"] for f in batch], all_delivered(len(batch)))
    refused = pacs.wait_rows(
        [lateral_sop, raw_sop], lambda r: len(r) == 2 and all(x["state"] == SKIPPED for x in r)
    )
    assert {row["sop_uid"]: row["reason"] for row in refused} == {
        lateral_sop: "lateral view (only frontal PA/AP chest films are screened)",
        raw_sop: "For Processing image (raw detector data, not meant for reading)",
    }

    # the CLI's predict on the very same files
    done = subprocess.run(
        [str(PYTHON), "-m", "cxr_core", "predict", *[str(f["file"]) for f in batch]],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    predicted = {json.loads(line)["file"]: json.loads(line) for line in done.stdout.splitlines()}
    by_sop = {row["sop_uid"]: row for row in rows}
    for film in batch:
        found = pacs.study_instances(film["study"])
        assert sorted(found) == ["DX", "OT", "SR"] and all(len(ids) == 1 for ids in found.values()), found
        sr = pydicom.dcmread(io.BytesIO(pacs.instance_file(found["SR"][0])))
        sc = pydicom.dcmread(io.BytesIO(pacs.instance_file(found["OT"][0])))
        assert sr.SOPClassUID == COMPREHENSIVE_SR and sc.SOPClassUID == SECONDARY_CAPTURE
        assert sr.StudyInstanceUID == sc.StudyInstanceUID == film["study"]
        assert sr.SeriesInstanceUID != sc.SeriesInstanceUID  # each in a new series of the study
        expected = predicted[str(film["file"])]
        assert sr_number(sr, PROBABILITY) == round(expected["probability"], 6)  # DS: 16 characters at most
        assert sr_number(sr, ("122411", "DCM")) == pytest.approx(expected["threshold"], abs=1e-6)
        assert by_sop[film["sop"]]["probability"] == round(expected["probability"], 6)
        assert by_sop[film["sop"]]["label"] == expected["label"]
        referenced = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert referenced.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == film["sop"]
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == film["sop"]
        assert sc.BurnedInAnnotation == "YES" and str(sc.PatientName) == "Doe^Jane"
        assert expected["model_version"] in sc.SoftwareVersions and "Not a medical device" in sc.ImageComments
    # the refused films got nothing back
    assert sorted(pacs.study_instances(lateral_study)) == ["DX"]
    assert sorted(pacs.study_instances(raw_study)) == ["DX"]
    status = pacs.node_status()
    assert status["skipped"]["lateral view (only frontal PA/AP chest films are screened)"] >= 1
    assert status["skipped"]["For Processing image (raw detector data, not meant for reading)"] >= 1
    log = (pacs.folder / "node.log").read_text()
    assert "not screened: lateral view" in log
    assert "Doe" not in log and "MRN-0042" not in log  # no patient identity in the node's log

    # both objects as stored by the PACS pass dciodvfy
    found = pacs.study_instances(batch[0]["study"])
    assert dciodvfy_errors(pacs.instance_file(found["SR"][0]), tmp_path, "sr.dcm") == []
    assert dciodvfy_errors(pacs.instance_file(found["OT"][0]), tmp_path, "sc.dcm") == []


def test_a_node_killed_mid_batch_loses_and_duplicates_nothing(pacs, films):
    batch, late = films[4:14], films[17:18]  # late: arrives in Orthanc while the node is dead
    sops = [f["sop"] for f in batch]
    for film in batch:
        pacs.upload(film["data"])
    # every film acknowledged (so in the queue), screening under way: kill -9
    rows = pacs.wait_rows(sops, lambda r: len(r) == len(batch), poll=0.02)
    pacs.kill("node")
    done_at_kill = sum(row["state"] == DELIVERED for row in pacs.rows_for(sops))
    assert done_at_kill < len(batch), "the node had finished before it was killed: nothing was tested"
    assert {row["sop_uid"] for row in rows} == set(sops)
    pacs.upload(late[0]["data"])  # Orthanc's forward fails: nobody listens
    deadline = time.monotonic() + 60
    while not pacs.failed_jobs() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pacs.failed_jobs(), "Orthanc's forward to the dead node did not fail: nothing was tested"

    pacs.up()  # Orthanc is still running: this starts the node again and resends Orthanc's failed forwards
    everything = batch + late
    rows = pacs.wait_rows([f["sop"] for f in everything], all_delivered(len(everything)))
    assert len({row["sop_uid"] for row in rows}) == len(everything)
    for film in everything:
        found = pacs.study_instances(film["study"])
        assert {modality: len(ids) for modality, ids in found.items()} == {"DX": 1, "SR": 1, "OT": 1}
    assert pacs.failed_jobs() == []  # every forward Orthanc made ended in success


def test_results_wait_out_a_pacs_that_is_down(pacs, films):
    from pynetdicom import AE
    from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation

    batch = films[14:17]
    sops = [f["sop"] for f in batch]
    pacs.kill("orthanc", signal.SIGTERM)
    # the films reach the node from elsewhere (Orthanc is down): straight C-STOREs as the PACS's AE
    ae = AE(ae_title="ORTHANC")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", pacs.node_port, ae_title="CXRTB")
    assert assoc.is_established
    try:
        for film in batch:
            status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(film["data"])))
            assert status.Status == 0x0000
    finally:
        assoc.release()
    rows = pacs.wait_rows(sops, lambda r: len(r) == len(batch) and all(x["attempts"] >= 2 for x in r))
    assert all(row["state"] != DELIVERED and "did not accept" in row["last_error"] for row in rows)
    time.sleep(3)
    pacs.up()  # Orthanc back (the node kept running)
    pacs.wait_rows(sops, all_delivered(len(batch)), timeout=60)
    for film in batch:
        found = pacs.study_instances(film["study"])
        assert {modality: len(ids) for modality, ids in found.items()} == {"SR": 1, "OT": 1}
