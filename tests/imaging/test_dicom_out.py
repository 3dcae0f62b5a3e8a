"""DICOM out: the result as a Secondary Capture a PACS files with the source study, read back with pydicom."""

import io

import numpy as np
import pydicom
import pytest
from builders import make_dicom

from cxr_core.errors import ImageError
from cxr_core.imaging.decode import read_image
from cxr_core.imaging.dicom_out import SECONDARY_CAPTURE, secondary_capture


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
    assert np.array_equal(ds.pixel_array, rgb)
    again = pydicom.dcmread(io.BytesIO(secondary_capture(rgb, source.metadata, "x", model_version="v7")))
    assert again.SeriesInstanceUID != ds.SeriesInstanceUID and again.SOPInstanceUID != ds.SOPInstanceUID
    # the project's own reader takes it as an image too
    assert read_image(data).format == "DICOM"


def test_without_a_study_uid_there_is_nothing_to_file_with():
    with pytest.raises(ImageError, match="Study Instance UID"):
        secondary_capture(np.zeros((4, 4, 3), np.uint8), {"PatientID": "x"}, "r", model_version="v")
