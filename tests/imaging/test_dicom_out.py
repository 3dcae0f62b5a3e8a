"""DICOM out: the result as a Secondary Capture and a Comprehensive SR a PACS files with the source study,
read back with pydicom and checked by dciodvfy (Debian dicom3tools)."""

import io
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from builders import make_dicom, make_dx_film
from tools import missing

from cxr_core.errors import ImageError
from cxr_core.imaging.decode import read_image
from cxr_core.imaging.dicom_out import (
    BURNT_LABEL,
    COMPREHENSIVE_SR,
    NOT_A_DEVICE,
    SECONDARY_CAPTURE,
    ScreeningResult,
    burnt_lines,
    result_sentence,
    result_uid,
    secondary_capture,
    structured_report,
)

STUDY = "1.2.826.0.1.3680043.8.498.12345"
ORG_ROOT = "1.2.826.0.1.3680043.10.1234"


@pytest.fixture
def source():
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 4095, (96, 80)).astype(np.uint16)
    return read_image(make_dicom(pixels, study=True), include_identifiers=True)


def test_study_identifiers_are_read_only_on_request():
    data = make_dicom(np.zeros((64, 64), np.uint16) + 100, study=True)
    plain = read_image(data).metadata
    for key in ("StudyInstanceUID", "StudyDate", "AccessionNumber"):
        assert key not in plain
    identified = read_image(data, include_identifiers=True).metadata
    assert identified["StudyInstanceUID"] == "1.2.826.0.1.3680043.8.498.12345"
    assert identified["StudyDate"] == "20240131" and identified["AccessionNumber"] == "ACC-7"


def test_secondary_capture_keeps_patient_and_study_and_gets_new_uids(source):
    rgb = np.zeros((96, 80, 3), np.uint8)
    rgb[10:20, 10:30] = (255, 0, 0)
    data = secondary_capture(
        rgb, source.metadata, "TB suspected — refer. TB probability 0.91", model_version="v7"
    )
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.SOPClassUID == SECONDARY_CAPTURE and ds.file_meta.MediaStorageSOPClassUID == SECONDARY_CAPTURE
    assert str(ds.PatientName) == "Doe^Jane" and ds.PatientID == "MRN-0042"
    assert ds.StudyInstanceUID == source.metadata["StudyInstanceUID"]
    assert ds.AccessionNumber == "ACC-7" and ds.StudyDate == "20240131"
    assert ds.SeriesInstanceUID != ds.StudyInstanceUID and ds.SOPInstanceUID != ds.SeriesInstanceUID
    assert "TB probability 0.91" in ds.ImageComments and "v7" in ds.DerivationDescription
    assert ds.Modality == "OT" and ds.PhotometricInterpretation == "RGB"
    # the picture is kept as it was; the result is burnt in below it
    assert np.array_equal(ds.pixel_array[: rgb.shape[0]], rgb) and ds.Rows > rgb.shape[0]
    assert ds.pixel_array[rgb.shape[0] :].any() and ds.BurnedInAnnotation == "YES"
    again = pydicom.dcmread(io.BytesIO(secondary_capture(rgb, source.metadata, "x", model_version="v7")))
    assert again.SeriesInstanceUID != ds.SeriesInstanceUID and again.SOPInstanceUID != ds.SOPInstanceUID
    # the project's own reader takes it as an image too
    assert read_image(data).format == "DICOM"


def test_without_a_study_uid_there_is_nothing_to_file_with():
    with pytest.raises(ImageError, match="Study Instance UID"):
        secondary_capture(np.zeros((4, 4, 3), np.uint8), {"PatientID": "x"}, "r", model_version="v")


@pytest.fixture
def dx_film():
    """A DX chest film as a modality sends it, with its header as the node reads it (no pixels needed)."""
    rng = np.random.default_rng(5)
    data = make_dx_film(rng.integers(0, 255, (300, 260)).astype(np.uint8), study_uid=STUDY)
    return data, pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def result(**changes) -> ScreeningResult:
    values = dict(
        probability=0.734512, threshold=0.5033, tb_suspected=True, decision="TB suspected \u2014 refer",
        model_version="v20261130-052333", site="clinic-a", evidence_in_lungs=0.81,
    )  # fmt: skip
    return ScreeningResult(**{**values, **changes})


def identity_of(header) -> dict:
    keys = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate")
    return {key: header.get(key) for key in keys} | {
        "PatientOrientation": "\\".join(header.PatientOrientation)
    }


def sc_for(header, outcome, **options) -> bytes:
    picture = np.full((300, 260, 3), 90, np.uint8)
    source = {"SOPClassUID": header.SOPClassUID, "SOPInstanceUID": header.SOPInstanceUID}
    return secondary_capture(
        picture, identity_of(header), result_sentence(outcome), model_version=outcome.model_version,
        lines=burnt_lines(outcome), source=source, **options,
    )  # fmt: skip


def dciodvfy_errors(data: bytes, tmp_path, name: str) -> list[str]:
    if shutil.which("dciodvfy") is None:
        missing("dciodvfy (Debian dicom3tools) is not installed")
    path = tmp_path / name
    path.write_bytes(data)
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    assert done.stdout + done.stderr, "dciodvfy said nothing at all"
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def test_the_capture_and_the_report_pass_dciodvfy(dx_film, tmp_path):
    _, header = dx_film
    assert dciodvfy_errors(sc_for(header, result()), tmp_path, "sc.dcm") == []
    assert dciodvfy_errors(structured_report(header, result()), tmp_path, "sr.dcm") == []
    no_lungs = structured_report(header, result(evidence_in_lungs=None, site=None, tb_suspected=False))
    assert dciodvfy_errors(no_lungs, tmp_path, "sr-plain.dcm") == []


def test_the_capture_shows_score_scale_and_label_in_its_pixels_and_references_the_film(dx_film):
    _, header = dx_film
    ds = pydicom.dcmread(io.BytesIO(sc_for(header, result())))
    band = ds.pixel_array[300:]
    assert np.array_equal(ds.pixel_array[:300], np.full((300, 260, 3), 90, np.uint8))
    # the colour scale: jet runs from deep blue to deep red
    assert ((band[..., 2] > 200) & (band[..., 0] < 60)).sum() > 20
    assert ((band[..., 0] > 200) & (band[..., 2] < 60)).sum() > 20
    assert (band.min(axis=2) > 200).sum() > 50  # white text
    assert ds.BurnedInAnnotation == "YES"
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert ds.SourceImageSequence[0].ReferencedSOPClassUID == header.SOPClassUID
    assert ds.PatientSex == "F" and ds.PatientOrientation == ["L", "F"] and "ReferringPhysicianName" in ds
    lines = burnt_lines(result())
    assert lines[1] == "TB probability 0.735 (TB suspected at 0.503 or above)" and "clinic-a" in lines[2]
    assert BURNT_LABEL == "AI result, not for diagnosis"


def test_the_report_carries_the_result_as_coded_items(dx_film):
    _, header = dx_film
    ds = pydicom.dcmread(io.BytesIO(structured_report(header, result())))
    assert ds.SOPClassUID == COMPREHENSIVE_SR and ds.Modality == "SR"
    assert ds.StudyInstanceUID == STUDY and str(ds.PatientName) == "Doe^Jane"
    assert ds.ConceptNameCodeSequence[0].CodeMeaning == "Chest CAD Report"
    items = {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in ds.ContentSequence}
    number = lambda name: float(items[name].MeasuredValueSequence[0].NumericValue)  # noqa: E731
    assert number("Probability") == 0.734512 and number("Threshold Value") == 0.5033
    assert number("Share of the evidence inside the lung fields") == 81.0
    assert items["Screening decision"].ConceptCodeSequence[0].CodeValue == "TBSUSPECT"
    assert items["Finding"].ConceptCodeSequence[0].CodeMeaning == "Tuberculosis"
    assert items["Algorithm Version"].TextValue == "v20261130-052333"
    assert items["Site profile"].TextValue == "clinic-a"
    comments = [item.TextValue for item in ds.ContentSequence if item.ValueType == "TEXT"]
    assert any(NOT_A_DEVICE in text for text in comments)
    image = items["Source image for image processing operation"].ReferencedSOPSequence[0]
    assert image.ReferencedSOPInstanceUID == header.SOPInstanceUID
    normal = pydicom.dcmread(
        io.BytesIO(structured_report(header, result(tb_suspected=False, probability=0.1)))
    )
    decision = [i for i in normal.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "DECISION"][0]
    assert decision.ConceptCodeSequence[0].CodeValue == "NOTBSIGNS"


def test_result_uids_are_uuid_derived_or_under_the_org_root_and_repeat_for_the_same_film(dx_film):
    _, header = dx_film
    first = pydicom.dcmread(io.BytesIO(sc_for(header, result())))
    again = pydicom.dcmread(io.BytesIO(sc_for(header, result())))
    other_model = pydicom.dcmread(io.BytesIO(sc_for(header, result(model_version="v2"))))
    assert first.SOPInstanceUID == again.SOPInstanceUID  # sent twice after a crash: one instance in the PACS
    assert other_model.SOPInstanceUID != first.SOPInstanceUID
    for uid in (first.SOPInstanceUID, first.SeriesInstanceUID):
        assert (
            uid.startswith("2.25.")
            and int(uid[5:]) < 2**128
            and not uid.startswith("1.2.826.0.1.3680043.8.498")
        )
    rooted = pydicom.dcmread(io.BytesIO(sc_for(header, result(), uid_root=ORG_ROOT)))
    sr = pydicom.dcmread(io.BytesIO(structured_report(header, result(), uid_root=ORG_ROOT)))
    for uid in (rooted.SOPInstanceUID, rooted.SeriesInstanceUID, sr.SOPInstanceUID, sr.SeriesInstanceUID):
        assert uid.startswith(ORG_ROOT + ".") and len(uid) <= 64 and uid.is_valid
    assert sr.SOPInstanceUID != rooted.SOPInstanceUID
    assert result_uid("a", root=ORG_ROOT) == result_uid("a", root=ORG_ROOT) != result_uid("b", root=ORG_ROOT)
    with pytest.raises(ImageError, match="too long"):
        result_uid("a", root="1." * 30)


def test_a_report_needs_the_film_it_is_about(dx_film):
    _, header = dx_film
    del header.SOPInstanceUID
    with pytest.raises(ImageError, match="Study/SOP Instance UID"):
        structured_report(header, result())


def test_uid_of_reads_the_instance_uid_back(dx_film):
    from cxr_core.imaging.dicom_out import uid_of

    _, header = dx_film
    for data in (sc_for(header, result()), structured_report(header, result())):
        assert uid_of(data) == pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
