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
    """The SOP Instance UID of a Part 10 object we wrote (read from its file meta)."""
    from pydicom import dcmread

    return str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


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
    for key in _COPIED:
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


def structured_report(
    source,
    result: ScreeningResult,
    *,
    uid_root: str = "",
    series_number: int = SR_SERIES_NUMBER,
) -> bytes:
    """A Comprehensive SR (Part 10 bytes) of ``result`` for the source film (a pydicom Dataset; its
    pixels are not needed), in the film's study, referencing it; built with highdicom."""
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from pydicom.sr.codedict import codes

    if not source.get("StudyInstanceUID") or not source.get("SOPInstanceUID"):
        raise ImageError(
            "the source has no Study/SOP Instance UID, so a PACS could not file the result with it"
        )

    def private(value: str, meaning: str):
        return hd.sr.CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)

    def text(name, value: str):
        return hd.sr.TextContentItem(name=name, value=_clip(value, 1024), relationship_type="CONTAINS")

    items = [
        hd.sr.CodeContentItem(
            name=codes.DCM.Finding,
            value=hd.sr.CodedConcept(value="56717001", scheme_designator="SCT", meaning="Tuberculosis"),
            relationship_type="CONTAINS",
        ),
        hd.sr.NumContentItem(
            name=codes.DCM.Probability,
            value=round(float(result.probability), 6),
            unit=codes.UCUM.NoUnits,
            relationship_type="CONTAINS",
        ),
        hd.sr.NumContentItem(
            name=codes.DCM.ThresholdValue,
            value=round(float(result.threshold), 6),
            unit=codes.UCUM.NoUnits,
            relationship_type="CONTAINS",
        ),
        hd.sr.CodeContentItem(
            name=private("DECISION", "Screening decision"),
            value=private("TBSUSPECT", "TB suspected, refer for confirmatory testing")
            if result.tb_suspected
            else private("NOTBSIGNS", "No TB signs detected"),
            relationship_type="CONTAINS",
        ),
        text(codes.DCM.AlgorithmName, ALGORITHM_NAME),
        text(codes.DCM.AlgorithmVersion, result.model_version),
        text(
            private("SITEPROF", "Site profile"),
            result.site or "none: the model's own operating point",
        ),
    ]
    if result.evidence_in_lungs is not None:
        items.append(
            hd.sr.NumContentItem(
                name=private("LUNGEVID", "Share of the evidence inside the lung fields"),
                value=round(100.0 * float(result.evidence_in_lungs), 1),
                unit=codes.UCUM.Percent,
                relationship_type="CONTAINS",
            )
        )
    else:
        items.append(
            text(private("LUNGEVID", "Share of the evidence inside the lung fields"), "not measured")
        )
    for warning in result.warnings:
        items.append(text(codes.DCM.Comment, f"Warning: {warning}"))
    items.append(text(codes.DCM.Comment, f"{BURNT_LABEL}. {NOT_A_DEVICE}"))
    items.append(
        hd.sr.ImageContentItem(
            name=codes.DCM.SourceImageForImageProcessingOperation,
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            relationship_type="CONTAINS",
        )
    )
    root = hd.sr.ContainerContentItem(name=codes.DCM.ChestCADReport)
    root.ContentSequence = hd.sr.ContentSequence(items)

    model = result.model_version
    header = _evidence_header(source)
    sr = hd.sr.ComprehensiveSR(
        evidence=[header],
        content=root,
        series_instance_uid=result_uid(str(source.StudyInstanceUID), model, "SR series", root=uid_root),
        series_number=series_number,
        sop_instance_uid=result_uid(str(source.SOPInstanceUID), model, "SR", root=uid_root),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SR_SERIES_DESCRIPTION,
    )
    sr.SpecificCharacterSet = "ISO_IR 192"
    sr.SoftwareVersions = f"model {model}"
    sr.CodingSchemeIdentificationSequence = [
        CodingSchemeIdentificationItem(designator=PRIVATE_SCHEME, name="TB screening dashboard concepts")
    ]
    return _part10(sr)


def _evidence_header(source):
    """The source's header with every Type 2 patient/study attribute present (highdicom copies them)."""
    from pydicom.dataset import Dataset

    header = Dataset()
    for element in source:
        if element.tag.group != 0x7FE0:
            header.add(element)
    for key in _TYPE_2:
        if key not in header:
            setattr(header, key, "")
    return header
