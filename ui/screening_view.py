"""The Screen page's view-model: which model serves, what a result means in words, what the CSV holds.

Patient identifiers stay out of every table and export unless the user switched them on; the CSV is
formula-safe because file names are user-controlled.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from cxr_core.errors import ModelError
from cxr_core.fsutil import read_json_or_empty
from cxr_core.imaging.display import DISPLAY_SIDE, display_gray
from cxr_core.modelling.predictor import TB, ScreenedImage, result_row, spreadsheet_safe
from cxr_core.registry.store import Registry, sha256_file
from cxr_core.settings import Layout

DISCLAIMER = (
    "Decision support for research and demonstration only. Not a medical device: every result needs "
    "a clinician's reading and confirmatory testing."
)
DECISION_TB = "TB suspected — refer for confirmatory testing"
DECISION_NORMAL = "No TB signs detected"
DECISION_FAILED = "Not assessed — see the message"


# --------------------------------------------------------------------------------- the serving model


@dataclass
class ServingModel:
    """The model the Screen page uses now; ``sha256`` keys the in-process model cache."""

    version: str
    model_dir: Path
    sha256: str
    threshold: float
    warning: str | None = None


def serving_model(registry: Registry | None = None, version: str | None = None) -> ServingModel:
    """Resolve the current version (or a named one) afresh, so a promotion is seen on the next run.

    Reading ``current.json`` and checking the model's sha256 takes milliseconds; the cache key then
    changes exactly when another version (or a rewritten file) is to be served.
    """
    registry = registry or Registry()
    model_dir, warning = registry.resolve_with_warning(version)
    meta = read_json_or_empty(model_dir / Layout.METADATA)
    sha = meta.get("model_sha256") or sha256_file(model_dir / Layout.MODEL)
    try:
        threshold = float(meta["threshold"])
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"model version {model_dir.name} has no operating threshold recorded") from error
    return ServingModel(
        version=str(meta.get("version") or model_dir.name),
        model_dir=model_dir,
        sha256=sha,
        threshold=threshold,
        warning=warning,
    )


# --------------------------------------------------------------------------------- screening results


def decision_text(item: ScreenedImage) -> str:
    """The result in words a clinician acts on."""
    if not item.ok or item.prediction is None:
        return DECISION_FAILED
    return DECISION_TB if item.prediction.label == TB else DECISION_NORMAL


def is_tb(item: ScreenedImage) -> bool:
    return item.ok and item.prediction is not None and item.prediction.label == TB


def fmt_probability(probability: float, threshold: float) -> tuple[str, str]:
    """Probability and threshold as text with enough decimals that they never look equal.

    At three decimals 0.9076 and 0.9081 both read 0.908, and "0.908: no TB signs" beside "TB from
    0.908" looks like a contradiction to the person reading it.
    """
    for digits in range(3, 7):
        shown, limit = f"{probability:.{digits}f}", f"{threshold:.{digits}f}"
        if shown != limit or probability == threshold:
            return shown, limit
    return f"{probability:.6f}", f"{threshold:.6f}"


BORDERLINE_MARGIN = 0.05


def is_borderline(item: ScreenedImage, margin: float = BORDERLINE_MARGIN) -> bool:
    """A probability this close to the threshold could fall either side with a slightly different film."""
    if not item.ok or item.prediction is None:
        return False
    return abs(item.prediction.probability - item.prediction.threshold) < margin


def shrink_for_display(item: ScreenedImage, max_side: int = DISPLAY_SIDE) -> ScreenedImage:
    """Keep only what the page redraws: the picture at screen size and the crop box scaled with it.

    A batch of full-resolution radiographs would otherwise sit in the session's memory (tens of MB
    each) just so the heatmap opacity can be changed. ``width``/``height`` keep the original size.
    """
    if not item.ok or item.image is None:
        return item
    height, width = item.image.pixels.shape[:2]
    small = display_gray(item.image.pixels, max_side)
    scale = min(1.0, max_side / max(height, width))  # the same factor gradcam.overlay would apply
    if item.box is not None and scale != 1.0:
        box = item.box
        item.box = type(box)(
            round(box.top * scale),
            round(box.left * scale),
            round(box.bottom * scale),
            round(box.right * scale),
        )
    item.image.pixels = small
    item.model_input = None
    return item


IDENTIFIER_FIELDS = {
    "PatientName": "patient_name",
    "PatientID": "patient_id",
    "PatientBirthDate": "patient_birth_date",
}
_DICOM_LABELS = {
    "Modality": "Modality",
    "ViewPosition": "View",
    "BodyPartExamined": "Body part",
    "PhotometricInterpretation": "Photometric interpretation",
    "BitsStored": "Bits stored",
    "WindowCenter": "Window centre",
    "WindowWidth": "Window width",
    "voi": "Display mapping",
    "TransferSyntax": "Transfer syntax",
    "PixelSpacing": "Pixel spacing (mm)",
    "ImagerPixelSpacing": "Imager pixel spacing (mm)",
    "NumberOfFrames": "Frames",
    "exif_orientation": "EXIF orientation applied",
}


def image_details(item: ScreenedImage, include_identifiers: bool = False) -> list[tuple[str, str]]:
    """(label, value) pairs describing the file: format, size, bit depth, DICOM header details."""
    image = item.image
    if image is None:
        return []
    rows = [
        ("Format", image.format),
        ("Size", f"{image.width} x {image.height} pixels"),
        ("Bit depth", str(image.bit_depth)),
    ]
    for key, label in _DICOM_LABELS.items():
        if key in image.metadata and image.metadata[key] not in (None, ""):
            rows.append((label, _text(image.metadata[key])))
    if include_identifiers:
        for key, name in IDENTIFIER_FIELDS.items():
            if image.metadata.get(key):
                rows.append((name.replace("_", " ").capitalize(), _text(image.metadata[key])))
    return rows


def _text(value) -> str:
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


SUMMARY_FIELDS = [
    "file",
    "decision",
    "tb_probability",
    "threshold",
    "label",
    "ok",
    "warnings",
    "error",
    "model_version",
]


def summary_rows(items: list[ScreenedImage], predictor, include_identifiers: bool = False) -> list[dict]:
    """One flat row per upload for the batch table and its CSV; identifiers only when asked for."""
    rows = []
    for item in items:
        base = result_row(item, predictor)
        row = {
            "file": base["file"],
            "decision": decision_text(item),
            "tb_probability": base["probability"],
            "threshold": round(float(base["threshold"]), 4),
            "label": base["label"],
            "ok": base["ok"],
            "warnings": base["warning"] or "",
            "error": base["error"] or "",
            "model_version": base["model_version"],
        }
        if include_identifiers:
            metadata = item.image.metadata if item.image else {}
            for key, name in IDENTIFIER_FIELDS.items():
                row[name] = _text(metadata[key]) if metadata.get(key) else ""
        rows.append(row)
    return rows


def summary_csv(rows: list[dict]) -> bytes:
    """The batch as CSV bytes; every text cell is neutralised so a file name cannot run as a formula."""
    fields = list(SUMMARY_FIELDS)
    for row in rows:
        fields += [key for key in row if key not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: spreadsheet_safe(value) for key, value in row.items()})
    return buffer.getvalue().encode("utf-8-sig")  # the BOM lets Excel read accented names correctly


def batch_counts(items: list[ScreenedImage]) -> dict[str, int]:
    return {
        "total": len(items),
        "tb": sum(1 for item in items if is_tb(item)),
        "normal": sum(1 for item in items if item.ok and not is_tb(item)),
        "failed": sum(1 for item in items if not item.ok),
        "with_warnings": sum(1 for item in items if item.ok and item.warnings),
    }
