"""DICOM out: a screening result as a Secondary Capture a PACS files with the study it came from.

The picture is the film with its Grad-CAM overlay (RGB); the result is in the text of the header
(Image Comments, Series and Derivation Description). Patient and study identity (Patient Name/ID,
Study Instance UID, accession number, study date) are copied from the source film so the PACS puts
the capture beside it; the series and the instance get new UIDs, so nothing is overwritten.
"""

from __future__ import annotations

import datetime as _dt
import io
from typing import Any

import numpy as np

from cxr_core.errors import ImageError

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SERIES_DESCRIPTION = "TB screening AI result (decision support)"
# Copied verbatim when the source film has them; a capture without a Study Instance UID cannot be filed.
_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
)


def secondary_capture(
    rgb: np.ndarray,
    identity: dict[str, Any],
    result_text: str,
    *,
    model_version: str,
    series_number: int = 9901,
    now: _dt.datetime | None = None,
) -> bytes:
    """A Part 10 Secondary Capture (explicit VR little endian) of ``rgb`` for the study in ``identity``.

    ``identity`` holds the source's DICOM identifiers as read with ``include_identifiers=True``;
    without a StudyInstanceUID there is no study to file the result with, so this refuses.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    if not identity.get("StudyInstanceUID"):
        raise ImageError("the source has no Study Instance UID, so a PACS could not file the result with it")
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError("a secondary capture needs an RGB picture")
    now = now or _dt.datetime.now()
    instance_uid = generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names with accents survive
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = instance_uid
    for key in _COPIED:
        value = identity.get(key)
        if value not in (None, ""):
            setattr(ds, key, str(value))
    for key in ("PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID"):
        if key not in ds:
            setattr(ds, key, "")  # type 2 attributes: present, empty when unknown
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.Modality = "OT"
    ds.ConversionType = "WSD"  # workstation
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.Manufacturer = "TB chest X-ray screening dashboard"
    ds.SoftwareVersions = f"model {model_version}"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = _clip(f"Grad-CAM overlay by model {model_version}: {result_text}", 1024)
    ds.ImageComments = _clip(result_text, 10240)
    ds.BurnedInAnnotation = "NO"

    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.tobytes()

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
