"""DICOM out: a screening result as a PACS files it with the study it came from.

Two objects, both in the source film's study, each in a series of its own:

* a **Secondary Capture** of the film with its Grad-CAM overlay, with the score, the colour scale and
  "AI result, not for diagnosis" burnt into the pixels (a PACS viewer shows pixels, rarely headers), so
  ``BurnedInAnnotation`` is YES;
* a **Comprehensive SR** that a reporting system can read: the TB probability as a numeric item, the
  decision, the threshold, the model version, the site profile, the evidence inside the lungs, the
  "not a medical device" text and a reference to the source image.

Why Comprehensive SR and not the Chest CAD SR IOD (TID 4100): TID 4100 describes located findings
(nodules, with their centre and outline, single-image and composite features); a whole-film TB probability
has no location, and forcing it into TID 4100 would need invented findings. Comprehensive SR carries the
same codes (DCM "Chest CAD Report", "Probability", "Threshold Value", "Algorithm Name/Version", "Source
image for image processing operation") without claiming a template it does not follow.

UIDs: in the 2.25 form (a UUID as an integer, PS3.5 B.2) or under a configured organisation root. With
``source_uid`` they are derived from the source SOP Instance UID and the model version, so the same film
screened by the same model always gives the same SR and SC UIDs: a result sent twice after a crash is
the same instance to the PACS, never a duplicate.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import uuid
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from cxr_core.errors import ImageError

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SERIES_DESCRIPTION = "TB screening AI result (decision support)"
SR_SERIES_DESCRIPTION = "TB screening AI report (decision support)"
BURNT_LABEL = "AI result, not for diagnosis"
NOT_A_DEVICE = (
    "Decision support for research and demonstration only. Not a medical device: every result needs "
    "a clinician's reading and confirmatory testing."
)
DECISION_TB = "TB suspected — refer for confirmatory testing"
DECISION_NORMAL = "No TB signs detected"
MANUFACTURER = "TB chest X-ray screening dashboard"
ALGORITHM_NAME = "TB chest X-ray screening (CNN with Grad-CAM)"
SC_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
# Our own concepts, where DICOM has none (PS3.16 8.2: private coding schemes start with "99").
PRIVATE_SCHEME = "99CXRTB"
_UUID_NAMESPACE = uuid.UUID("6f1c3c2e-9a55-4c1e-9a7e-2f0f3d1c7b11")

# Copied verbatim when the source film has them; a result without a Study Instance UID cannot be filed.
IDENTITY_KEYS = (
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
# Type 2: present (empty when unknown) in both objects (PS3.3 C.7.1.1 Patient, C.7.2.1 General Study).
_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
)


def result_uid(*parts: str, root: str = "") -> str:
    """A UID for a result, the same for the same ``parts``: 2.25.<uuid> or ``<root>.<number>`` (<= 64 chars)."""
    name = "|".join(parts)
    if not root:
        return f"2.25.{uuid.uuid5(_UUID_NAMESPACE, name).int}"
    root = root.rstrip(".")
    room = 64 - len(root) - 1
    if room < 10:
        raise ImageError(f"the UID root {root!r} is too long to build result UIDs under it")
    number = int.from_bytes(hashlib.sha256(name.encode()).digest(), "big") % (10 ** min(room, 38))
    return f"{root}.{number}"


def new_uid(root: str = "") -> str:
    """A fresh random UID in the same forms (2.25 UUID, or under the organisation root)."""
    return result_uid(uuid.uuid4().hex, root=root)


@dataclass
class ScreeningResult:
    """What the SR says and the SC burns in; filled from a Predictor's output by the node."""

    probability: float
    threshold: float
    tb_suspected: bool
    decision: str  # in words, as the dashboard says it
    model_version: str
    site: str | None = None
    evidence_in_lungs: float | None = None  # share of the Grad-CAM mass inside the lung fields, 0..1
    warnings: tuple[str, ...] = ()

    def shown(self) -> tuple[str, str]:
        """Probability and threshold with enough decimals that they never look equal."""
        for digits in range(3, 7):
            shown, limit = f"{self.probability:.{digits}f}", f"{self.threshold:.{digits}f}"
            if shown != limit or self.probability == self.threshold:
                return shown, limit
        return f"{self.probability:.6f}", f"{self.threshold:.6f}"


def result_sentence(result: ScreeningResult) -> str:
    """The result in one line for the SC's header (as the dashboard's download writes it)."""
    shown, limit = result.shown()
    site = f", site profile {result.site}" if result.site else ""
    return (
        f"{result.decision}. TB probability {shown} (called TB suspected at {limit} or above), "
        f"model {result.model_version}{site}. {NOT_A_DEVICE}"
    )


def burnt_lines(result: ScreeningResult) -> list[str]:
    """What a reader sees under the film: the decision, the score against the threshold, the model."""
    shown, limit = result.shown()
    lines = [result.decision, f"TB probability {shown} (TB suspected at {limit} or above)"]
    lines.append(f"model {result.model_version}" + (f", site profile {result.site}" if result.site else ""))
    return lines


def uid_of(data: bytes) -> str:
    """The SOP Instance UID of a Part 10 object we wrote (read up to the pixels only: an SC is megabytes)."""
    from pydicom import dcmread

    header = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    return str(header.SOPInstanceUID)


# ------------------------------------------------------------------------------------ burnt-in picture


def burn_in(rgb: np.ndarray, lines: list[str], *, label: str = BURNT_LABEL) -> np.ndarray:
    """The picture with a band below it: the label, the result lines and the heatmap's colour scale.

    Hershey fonts (OpenCV) draw ASCII only, so other characters are replaced; the text is sized to the
    picture so it stays legible on a 512 px film and on a 3000 px one.
    """
    height, width = rgb.shape[:2]
    scale = max(0.4, width / 1400)
    thickness = max(1, round(scale * 2))
    line_height = int(34 * scale) + 4
    bar_height = int(16 * scale) + 4
    band_height = line_height * (len(lines) + 1) + bar_height + line_height + 8
    band = np.zeros((band_height, width, 3), np.uint8)
    y = line_height

    def text(value: str, y: int, colour, x: int = 8, size: float = scale) -> None:
        ascii_value = value.replace("\u2014", "-").encode("ascii", "replace").decode()
        cv2.putText(band, ascii_value, (x, y), cv2.FONT_HERSHEY_SIMPLEX, size, colour, thickness, cv2.LINE_AA)

    text(label, y, (255, 200, 0))
    for line in lines:
        y += line_height
        text(line, y, (255, 255, 255))
    # the colour scale of the heatmap: jet over TB-probability units, 0 left, 1 right
    left, right = 16 + int(150 * scale), width - 8 - int(40 * scale)
    if right - left > 20:
        top = y + line_height // 2
        ramp = np.linspace(0, 255, right - left).astype(np.uint8)[None, :].repeat(bar_height, 0)
        colours = cv2.applyColorMap(ramp, cv2.COLORMAP_JET)
        band[top : top + bar_height, left:right] = cv2.cvtColor(colours, cv2.COLOR_BGR2RGB)
        small = max(0.35, scale * 0.7)
        text("heatmap 0", top + bar_height - 2, (255, 255, 255), size=small)
        text("1", top + bar_height - 2, (255, 255, 255), x=right + 6, size=small)
    return np.ascontiguousarray(np.vstack([rgb, band]))


def _default_lines(result_text: str) -> list[str]:
    """The first two sentences of a result text (decision, probability) for the burnt-in band."""
    sentences = [part.strip() for part in result_text.split(". ") if part.strip()]
    return [s if len(s) <= 80 else s[:79] + "..." for s in sentences[:2]]


# ---------------------------------------------------------------------------------- Secondary Capture


def secondary_capture(
    rgb: np.ndarray,
    identity: dict[str, Any],
    result_text: str,
    *,
    model_version: str,
    lines: list[str] | None = None,
    source: dict[str, str] | None = None,
    uid_root: str = "",
    series_number: int = SC_SERIES_NUMBER,
    now: _dt.datetime | None = None,
) -> bytes:
    """A Part 10 Secondary Capture (explicit VR little endian) of ``rgb`` for the study in ``identity``.

    ``identity`` holds the source's DICOM identifiers as read with ``include_identifiers=True``;
    without a StudyInstanceUID there is no study to file the result with, so this refuses. ``lines``
    are burnt in under the picture (default: the first sentences of ``result_text``). ``source``
    (``SOPClassUID``, ``SOPInstanceUID``) references the film in SourceImageSequence and makes the
    capture's UIDs repeatable for that film and model.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    if not identity.get("StudyInstanceUID"):
        raise ImageError("the source has no Study Instance UID, so a PACS could not file the result with it")
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError("a secondary capture needs an RGB picture")
    rgb = burn_in(rgb, lines if lines is not None else _default_lines(result_text))
    now = now or _dt.datetime.now()
    study_uid = str(identity["StudyInstanceUID"])
    if source and source.get("SOPInstanceUID"):
        instance_uid = result_uid(source["SOPInstanceUID"], model_version, "SC", root=uid_root)
        series_uid = result_uid(study_uid, model_version, "SC series", root=uid_root)
    else:
        instance_uid, series_uid = new_uid(uid_root), new_uid(uid_root)

    ds = _document_base(Dataset(), identity)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.file_meta.MediaStorageSOPInstanceUID = instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = instance_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.Modality = "OT"
    ds.Laterality = ""  # Type 2C (General Series): present, empty, as a chest is not a paired body part
    ds.PatientOrientation = identity.get("PatientOrientation") or ""  # Type 2C (General Image)
    ds.ConversionType = "WSD"  # workstation
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.SoftwareVersions = f"model {model_version}"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = _clip(f"Grad-CAM overlay by model {model_version}: {result_text}", 1024)
    ds.ImageComments = _clip(result_text, 10240)
    ds.BurnedInAnnotation = "YES"  # the result, the label and the scale are in the pixels
    if source and source.get("SOPInstanceUID"):
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.get("SOPClassUID") or SECONDARY_CAPTURE
        reference.ReferencedSOPInstanceUID = source["SOPInstanceUID"]
        ds.SourceImageSequence = [reference]

    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.tobytes()
    return _part10(ds)


def _document_base(ds, identity: dict[str, Any]):
    """Character set, patient and study identity (Type 2 present, empty when unknown), equipment."""
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names with accents survive
    for key in IDENTITY_KEYS:
        value = identity.get(key)
        if value not in (None, ""):
            setattr(ds, key, str(value))
    for key in _TYPE_2:
        if key not in ds:
            setattr(ds, key, "")
    ds.Manufacturer = MANUFACTURER
    return ds


def _part10(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------- Structured Report


def _code(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


# The codes of the report (PS3.16: DCM and SNOMED CT; UCUM units; ours where DICOM has none).
CHEST_CAD_REPORT = ("112000", "DCM", "Chest CAD Report")
FINDING = ("121071", "DCM", "Finding")
TUBERCULOSIS = ("56717001", "SCT", "Tuberculosis")
PROBABILITY = ("122157", "DCM", "Probability")
THRESHOLD_VALUE = ("122411", "DCM", "Threshold Value")
ALGORITHM_NAME_CODE = ("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = ("111003", "DCM", "Algorithm Version")
COMMENT = ("121106", "DCM", "Comment")
SOURCE_IMAGE = ("121322", "DCM", "Source image for image processing operation")
NO_UNITS = ("1", "UCUM", "no units")
PERCENT = ("%", "UCUM", "Percent")
DECISION = ("DECISION", PRIVATE_SCHEME, "Screening decision")
TB_SUSPECTED = ("TBSUSPECT", PRIVATE_SCHEME, "TB suspected, refer for confirmatory testing")
NO_TB_SIGNS = ("NOTBSIGNS", PRIVATE_SCHEME, "No TB signs detected")
SITE_PROFILE = ("SITEPROF", PRIVATE_SCHEME, "Site profile")
LUNG_EVIDENCE = ("LUNGEVID", PRIVATE_SCHEME, "Share of the evidence inside the lung fields")


def _item(value_type: str, name: tuple[str, str, str]):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [_code(*name)]
    return item


def _text_item(name, value: str):
    item = _item("TEXT", name)
    item.TextValue = _clip(value, 1024)
    return item


def _num_item(name, value: float, unit):
    from pydicom.dataset import Dataset
    from pydicom.valuerep import DS

    item = _item("NUM", name)
    measured = Dataset()
    measured.MeasurementUnitsCodeSequence = [_code(*unit)]
    measured.NumericValue = DS(value, auto_format=True)
    measured.FloatingPointValue = float(value)
    item.MeasuredValueSequence = [measured]
    return item


def _code_item(name, value):
    item = _item("CODE", name)
    item.ConceptCodeSequence = [_code(*value)]
    return item


def structured_report(
    source,
    result: ScreeningResult,
    *,
    uid_root: str = "",
    series_number: int = SR_SERIES_NUMBER,
    now: _dt.datetime | None = None,
) -> bytes:
    """A Comprehensive SR (Part 10 bytes) of ``result`` for the source film (a pydicom Dataset; its
    pixels are not needed), in the film's study, referencing it.

    Written with pydicom: highdicom built the same document (its output was the model for this one)
    at ~0.4 s of CPU per report, four times the screening itself, which the node could not afford;
    dciodvfy checks this one in the tests.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not source.get(key):
            raise ImageError(
                "the source has no Study/SOP Instance UID, so a PACS could not file the result with it"
            )
    now = now or _dt.datetime.now()
    model = result.model_version
    instance_uid = result_uid(str(source.SOPInstanceUID), model, "SR", root=uid_root)

    ds = _document_base(Dataset(), {key: source.get(key) for key in IDENTITY_KEYS})
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = COMPREHENSIVE_SR
    ds.file_meta.MediaStorageSOPInstanceUID = instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = COMPREHENSIVE_SR
    ds.SOPInstanceUID = instance_uid
    ds.InstanceCreationDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.Modality = "SR"
    ds.SeriesInstanceUID = result_uid(str(source.StudyInstanceUID), model, "SR series", root=uid_root)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = SR_SERIES_DESCRIPTION
    ds.InstanceNumber = 1
    ds.SoftwareVersions = f"model {model}"
    ds.ReferencedPerformedProcedureStepSequence = []  # Type 2 (SR Document Series)
    ds.PerformedProcedureCodeSequence = []  # Type 2 (SR Document General)
    scheme = Dataset()
    scheme.CodingSchemeDesignator, scheme.CodingSchemeName = PRIVATE_SCHEME, "TB screening dashboard concepts"
    ds.CodingSchemeIdentificationSequence = [scheme]

    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    series = Dataset()
    series.ReferencedSOPSequence = [reference]
    series.SeriesInstanceUID = source.SeriesInstanceUID
    evidence = Dataset()
    evidence.ReferencedSeriesSequence = [series]
    evidence.StudyInstanceUID = source.StudyInstanceUID
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"  # a machine's result: no one has verified it
    ds.PreliminaryFlag = "PRELIMINARY"

    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code(*CHEST_CAD_REPORT)]
    ds.ContinuityOfContent = "SEPARATE"
    items = [
        _code_item(FINDING, TUBERCULOSIS),
        _num_item(PROBABILITY, round(float(result.probability), 6), NO_UNITS),
        _num_item(THRESHOLD_VALUE, round(float(result.threshold), 6), NO_UNITS),
        _code_item(DECISION, TB_SUSPECTED if result.tb_suspected else NO_TB_SIGNS),
        _text_item(ALGORITHM_NAME_CODE, ALGORITHM_NAME),
        _text_item(ALGORITHM_VERSION, model),
        _text_item(SITE_PROFILE, result.site or "none: the model's own operating point"),
    ]
    if result.evidence_in_lungs is not None:
        items.append(_num_item(LUNG_EVIDENCE, round(100.0 * float(result.evidence_in_lungs), 1), PERCENT))
    else:
        items.append(_text_item(LUNG_EVIDENCE, "not measured"))
    items += [_text_item(COMMENT, f"Warning: {warning}") for warning in result.warnings]
    items.append(_text_item(COMMENT, f"{BURNT_LABEL}. {NOT_A_DEVICE}"))
    image = _item("IMAGE", SOURCE_IMAGE)
    image.ReferencedSOPSequence = [reference]
    items.append(image)
    ds.ContentSequence = items
    return _part10(ds)
