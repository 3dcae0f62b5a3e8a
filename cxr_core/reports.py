"""What the dashboard pages show, computed without streamlit so every figure can be tested on its own.

The pages only lay things out; this module decides which model is serving, what a result means in
words, what goes into the downloadable CSV (formula-safe, without patient identifiers unless asked
for), how a registry version's evaluation artifacts are read, what the threshold explorer reports,
which test images the model got wrong, and how a retrain job's status reads to a person.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cxr_core import metrics
from cxr_core.errors import CxrError, DatasetError, ModelError
from cxr_core.evaluate import dataset_root
from cxr_core.inference import TB, ScreenedImage, result_row, spreadsheet_safe
from cxr_core.paths import PROJECT_ROOT
from cxr_core.registry import Registry, sha256_file

DISCLAIMER = (
    "Decision support for research and demonstration only. Not a medical device: every result needs "
    "a clinician's reading and confirmatory testing."
)
DECISION_TB = "TB suspected — refer for confirmatory testing"
DECISION_NORMAL = "No TB signs detected"
DECISION_FAILED = "Not assessed — see the message"

DISPLAY_SIDE = 768

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
    meta = _read_json(model_dir / "metadata.json")
    sha = meta.get("model_sha256") or sha256_file(model_dir / "model.keras")
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


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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


def display_gray(gray: np.ndarray, max_side: int = DISPLAY_SIDE) -> np.ndarray:
    """The original picture shrunk for the screen (a browser shows no more than this anyway)."""
    height, width = gray.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale >= 1.0:
        return gray
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


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


# --------------------------------------------------------------------------------- evaluation artifacts

PLOTS = ("roc", "pr", "calibration", "confusion")


@dataclass
class Evaluation:
    """A registered version's evaluation, as written by the pipeline into its registry folder."""

    version: str
    model_dir: Path
    metadata: dict
    metrics: dict
    plots: dict[str, list[dict]]
    predictions: list[dict]
    card: str | None
    problems: list[str] = field(default_factory=list)

    @property
    def threshold(self) -> float:
        value = self.metadata.get("threshold", self.metrics.get("threshold"))
        return float(value) if value is not None else metrics.FALLBACK_THRESHOLD

    @property
    def operating_point(self) -> dict:
        op = self.metrics.get("operating_point")
        return op if isinstance(op, dict) else self.metrics

    @property
    def labels(self) -> np.ndarray:
        return np.array([row["label"] for row in self.predictions], dtype=np.int64)

    @property
    def probabilities(self) -> np.ndarray:
        return np.array([row["probability"] for row in self.predictions], dtype=np.float64)

    @property
    def test_prevalence(self) -> float | None:
        if not self.predictions:
            return self.metrics.get("prevalence")
        return float(self.labels.mean())


def load_evaluation(registry: Registry, version: str) -> Evaluation:
    """Everything the Evaluation page shows for one version; missing pieces are listed, not fatal."""
    model_dir = registry.version_dir(version)
    problems = []
    metadata = registry.metadata(version)
    report = _read_json(model_dir / "metrics.json")
    if not report:
        problems.append("metrics.json is missing; only the summary recorded at registration is shown")
        report = metadata.get("metrics") or {}
    plots = {}
    for name in PLOTS:
        try:
            data = json.loads((model_dir / "plots" / f"{name}.json").read_text(encoding="utf-8"))
            plots[name] = data if isinstance(data, list) else []
        except (OSError, ValueError):
            plots[name] = []
    predictions = read_predictions(model_dir / "predictions.csv")
    if not predictions:
        problems.append(
            "predictions.csv is missing, so the threshold explorer and error gallery are unavailable"
        )
    try:
        card = (model_dir / "MODEL_CARD.md").read_text(encoding="utf-8")
    except OSError:
        card = None
    return Evaluation(version, model_dir, metadata, report, plots, predictions, card, problems)


def card_for_display(card: str, shift: int = 2) -> str:
    """The model card with its headings made smaller (it sits inside a page)."""
    lines = []
    for line in card.splitlines():
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            line = "#" * min(6, level + shift) + line[level:]
        lines.append(line)
    return "\n".join(lines)


def read_predictions(path: Path) -> list[dict]:
    """Test-set rows (path, member, source, label, probability, predicted, correct), typed; bad rows dropped."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            raw = list(csv.DictReader(handle))
    except OSError:
        return []
    rows = []
    for row in raw:
        try:
            probability = float(row["probability"])
            label = int(float(row["label"]))
        except (KeyError, TypeError, ValueError):
            continue
        if label not in (0, 1) or not 0.0 <= probability <= 1.0:
            continue
        predicted = row.get("predicted")
        rows.append(
            {
                "path": row.get("path") or "",
                "member": row.get("member") or None,
                "source": row.get("source") or "",
                "label": label,
                "probability": probability,
                "predicted": int(float(predicted)) if predicted not in (None, "") else None,
            }
        )
    return rows


def report_table(report: dict) -> list[dict]:
    """sklearn's classification report as rows, in the layout of its text output (and the original's).

    Normal and Tuberculosis with precision, recall, F1 and support; then accuracy (only F1 column and
    total support filled, as sklearn prints it); then macro and weighted averages.
    """
    rows = []
    for name in ("Normal", "Tuberculosis"):
        cells = report.get(name) or {}
        rows.append(_report_row(name, cells))
    total = sum(int((report.get(n) or {}).get("support") or 0) for n in ("Normal", "Tuberculosis"))
    if "accuracy" in report:
        rows.append(
            {
                "": "accuracy",
                "precision": None,
                "recall": None,
                "f1-score": report["accuracy"],
                "support": total,
            }
        )
    for name in ("macro avg", "weighted avg"):
        if name in report:
            rows.append(_report_row(name, report[name]))
    return rows


def _report_row(name: str, cells: dict) -> dict:
    return {
        "": name,
        "precision": cells.get("precision"),
        "recall": cells.get("recall"),
        "f1-score": cells.get("f1-score"),
        "support": int(cells["support"]) if cells.get("support") is not None else None,
    }


def report_text(report: dict, digits: int = 2) -> str:
    """The same report as sklearn's fixed-width text, for those used to reading it that way."""
    width = max(len("weighted avg"), len("Tuberculosis"))
    head = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
    lines = [head, ""]

    def num(value):
        return f"{value:>9.{digits}f}" if isinstance(value, int | float) else f"{'':>9}"

    for row in report_table(report):
        name = row[""]
        if name == "accuracy":
            lines.append("")
        lines.append(
            f"{name:>{width}} {num(row['precision'])} {num(row['recall'])} {num(row['f1-score'])} "
            f"{row['support'] if row['support'] is not None else '':>9}"
        )
    return "\n".join(lines)


def confusion_table(evaluation: Evaluation) -> list[dict]:
    """2x2 counts at the operating point, labelled the way a clinician reads them."""
    matrix = evaluation.metrics.get("confusion_matrix")
    op = evaluation.operating_point
    if matrix:
        (tn, fp), (fn, tp) = matrix
    elif all(op.get(k) is not None for k in ("tn", "fp", "fn", "tp")):
        tn, fp, fn, tp = op["tn"], op["fp"], op["fn"], op["tp"]
    else:
        return []
    return [
        {"": "Actually Normal", "Model: Normal": tn, "Model: TB suspected": fp},
        {"": "Actually Tuberculosis", "Model: Normal": fn, "Model: TB suspected": tp},
    ]


def per_source_rows(evaluation: Evaluation) -> list[dict]:
    """Figures per data source; undefined ones (AUC of a one-class source) are None."""
    rows = []
    for source, summary in (evaluation.metrics.get("per_source") or {}).items():
        op = summary.get("operating_point", summary)
        rows.append(
            {
                "source": source,
                "images": summary.get("n"),
                "TB images": summary.get("n_positive"),
                "ROC AUC": summary.get("roc_auc"),
                "sensitivity": op.get("sensitivity"),
                "specificity": op.get("specificity"),
            }
        )
    return rows


def site_confound_warning(evaluation: Evaluation) -> str | None:
    """A warning when no data source holds both classes: then a high AUC may only recognise the hospital.

    With TB films all from one hospital and normal films from another, the framing, markers and
    exposure of each site separate the classes as well as the lungs do, and the test split cannot
    tell which the model learned.
    """
    per_source = evaluation.metrics.get("per_source") or {}
    if len(per_source) < 2:
        return None
    mixed = [
        name
        for name, summary in per_source.items()
        if 0 < (summary.get("n_positive") or 0) < (summary.get("n") or 0)
    ]
    if mixed:
        return None
    return (
        "No data source in the test set contains both TB and normal films, so these figures cannot show "
        "whether the model recognises TB or the hospital an image came from. Validate it on images from "
        "your own clinic, with both outcomes, before relying on it."
    )


def fmt_interval(interval, digits: int = 3, percent: bool = False) -> str:
    """'95% CI 0.871–0.944', or '' when the interval could not be estimated."""
    if not interval or len(interval) != 2 or None in interval:
        return ""
    if percent:
        return f"95% CI {interval[0] * 100:.1f}%–{interval[1] * 100:.1f}%"
    return f"95% CI {interval[0]:.{digits}f}–{interval[1]:.{digits}f}"


def fmt_ci(value: float | None, interval, digits: int = 3, percent: bool = False) -> str:
    """'0.912 (95% CI 0.871–0.944)', or 'n/a' for an undefined value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"

    def fmt(number):
        return f"{number * 100:.1f}%" if percent else f"{number:.{digits}f}"

    text = fmt(value)
    if interval and len(interval) == 2 and None not in interval:
        text += f" (95% CI {fmt(interval[0])}–{fmt(interval[1])})"
    return text


# --------------------------------------------------------------------------------- threshold explorer


def threshold_table(evaluation: Evaluation) -> list[dict]:
    if not evaluation.predictions:
        return []
    return metrics.threshold_table(evaluation.labels, evaluation.probabilities)


def explore_threshold(
    evaluation: Evaluation, threshold: float, prevalence: float, table: list[dict] | None = None
) -> dict:
    """Sensitivity, specificity, PPV and NPV at any threshold, on the test set and at a clinic's prevalence.

    The test set's PPV/NPV hold only at its own (usually much higher) TB prevalence; a screening clinic
    should read the figures at its own prevalence, which Bayes' rule gives from sensitivity and
    specificity.
    """
    if not evaluation.predictions:
        raise DatasetError("this version has no stored test predictions to explore")
    table = table if table is not None else threshold_table(evaluation)
    point = metrics.lookup_threshold_table(table, threshold)
    op = metrics.operating_point(evaluation.labels, evaluation.probabilities, threshold)
    sens, spec = point["sensitivity"], point["specificity"]
    clinic_ppv = clinic_npv = None
    if sens is not None and spec is not None:
        clinic_ppv, clinic_npv = metrics.ppv_npv_at_prevalence(sens, spec, prevalence)
    return {
        "threshold": float(threshold),
        "sensitivity": sens,
        "specificity": spec,
        "ppv": op["ppv"],
        "npv": op["npv"],
        "tp": op["tp"],
        "fp": op["fp"],
        "tn": op["tn"],
        "fn": op["fn"],
        "test_prevalence": evaluation.test_prevalence,
        "prevalence": float(prevalence),
        "clinic_ppv": clinic_ppv,
        "clinic_npv": clinic_npv,
        "who_minimum_met": metrics.who_minimum_met(sens, spec),
        "per_1000": _per_1000(sens, spec, prevalence),
    }


def _per_1000(sens: float | None, spec: float | None, prevalence: float) -> dict | None:
    """Expected outcomes per 1,000 people screened: the numbers a programme plans with."""
    if sens is None or spec is None:
        return None
    with_tb = 1000 * prevalence
    without = 1000 - with_tb
    return {
        "with_tb": with_tb,
        "detected": with_tb * sens,
        "missed": with_tb * (1 - sens),
        "false_alarms": without * (1 - spec),
        "referred": with_tb * sens + without * (1 - spec),
    }


def threshold_curve_rows(table: list[dict], steps: int = 500) -> list[dict]:
    """Long-format rows (threshold, measure, value) across 0..1 for a sensitivity/specificity chart.

    Sampled on a regular grid through :func:`metrics.lookup_threshold_table`, so the curves span the
    whole axis (not just the range of observed scores) and match the explorer's numbers exactly.
    """
    if not table:
        return []
    rows = []
    for i in range(steps + 1):
        point = metrics.lookup_threshold_table(table, i / steps)
        for measure in ("sensitivity", "specificity"):
            if point[measure] is not None:
                rows.append({"threshold": i / steps, "measure": measure, "value": point[measure]})
    return rows


# --------------------------------------------------------------------------------- error gallery


@dataclass
class GalleryEntry:
    name: str
    source: str
    kind: str  # "missed TB" or "false alarm"
    probability: float
    label: int
    image: np.ndarray | None = None  # the original, shrunk for display
    overlay: np.ndarray | None = None
    problem: str | None = None


def misclassified(evaluation: Evaluation, threshold: float | None = None) -> list[dict]:
    """Test rows the model got wrong at ``threshold`` (default: its own): missed TB first, worst first."""
    threshold = evaluation.threshold if threshold is None else float(threshold)
    missed = [r for r in evaluation.predictions if r["label"] == 1 and r["probability"] < threshold]
    alarms = [r for r in evaluation.predictions if r["label"] == 0 and r["probability"] >= threshold]
    missed.sort(key=lambda r: r["probability"])
    alarms.sort(key=lambda r: -r["probability"])
    return missed + alarms


def _resolve_image_path(path: str, data_root: str | None = None) -> str:
    """Where a test image is on this machine: as recorded, else under the model's dataset, else the project.

    ``predictions.csv`` records paths relative to the dataset the model was trained on.
    """
    if not path or os.path.isabs(path) and os.path.exists(path):
        return path
    for base in (dataset_root(data_root) if data_root else None, PROJECT_ROOT):
        if base is not None and (Path(base) / path).exists():
            return str(Path(base) / path)
    return path


def error_gallery(
    predictor, rows: list[dict], alpha: float = 0.4, limit: int = 12, data_root: str | None = None
) -> list[GalleryEntry]:
    """The wrongly classified test images with their Grad-CAM, scored in one batch.

    A test image may be gone (the model was trained on another machine); its entry says so instead
    of failing the page.
    """
    from cxr_core.datasets import Record, read_record_bytes
    from cxr_core.gradcam import overlay

    entries: list[GalleryEntry] = []
    to_screen: list[tuple[str, bytes]] = []
    slots: list[int] = []
    for row in rows[:limit]:
        path = _resolve_image_path(row["path"], data_root)
        name = os.path.basename(row["member"] or path) or "(unnamed)"
        entry = GalleryEntry(
            name=name,
            source=row["source"],
            kind="missed TB (false negative)" if row["label"] == 1 else "false alarm (false positive)",
            probability=row["probability"],
            label=row["label"],
        )
        try:
            data = read_record_bytes(Record(path, row["label"], row["source"], row["member"]))
        except (CxrError, OSError, ValueError) as error:
            entry.problem = f"image not available on this machine ({error})"
        else:
            slots.append(len(entries))
            to_screen.append((name, data))
        entries.append(entry)
    if to_screen:
        for index, item in zip(slots, predictor.screen(to_screen), strict=True):
            entry = entries[index]
            if not item.ok:
                entry.problem = item.error
                continue
            entry.image = display_gray(item.image.pixels)
            entry.overlay = overlay(item.image.pixels, item.prediction.heatmap, item.box, alpha)
    return entries


# --------------------------------------------------------------------------------- versions

_COMPARE = (
    ("Created", lambda e: str(e.metadata.get("created", ""))[:19].replace("T", " ")),
    ("Test images", lambda e: test_set_text(e)),
    ("Operating threshold", lambda e: f"{e.threshold:.4f}"),
    ("ROC AUC", lambda e: fmt_ci(e.metrics.get("roc_auc"), e.metrics.get("roc_auc_ci"))),
    ("PR AUC", lambda e: fmt_ci(e.metrics.get("pr_auc"), e.metrics.get("pr_auc_ci"))),
    (
        "Sensitivity",
        lambda e: fmt_ci(e.operating_point.get("sensitivity"), e.operating_point.get("sensitivity_ci")),
    ),
    (
        "Specificity",
        lambda e: fmt_ci(e.operating_point.get("specificity"), e.operating_point.get("specificity_ci")),
    ),
    ("PPV (test set)", lambda e: fmt_ci(e.operating_point.get("ppv"), None)),
    ("NPV (test set)", lambda e: fmt_ci(e.operating_point.get("npv"), None)),
    ("Accuracy", lambda e: fmt_ci(e.operating_point.get("accuracy"), None)),
    ("WHO minimum met", lambda e: _yes_no(e.metrics.get("who_minimum_met"))),
    ("Brier score", lambda e: fmt_ci(e.metrics.get("brier"), None)),
    ("Calibration error (ECE)", lambda e: fmt_ci(e.metrics.get("ece"), None)),
    ("Epochs trained", lambda e: str(e.metadata.get("epochs_run", "n/a"))),
    ("Training data", lambda e: str(e.metadata.get("data_path", "n/a"))),
    ("Data fingerprint", lambda e: str(e.metadata.get("data_fingerprint", ""))[:12] or "n/a"),
)


def test_set_text(evaluation: Evaluation) -> str:
    """'840 images, 140 with TB' for captions."""
    n = evaluation.metrics.get("n", evaluation.metrics.get("test_images"))
    tb = evaluation.metrics.get("n_positive")
    if n is None:
        return "size not recorded"
    return f"{n} images, {tb} with TB" if tb is not None else f"{n} images"


def _yes_no(value) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def compare_rows(evaluations: list[Evaluation]) -> list[dict]:
    """One row per figure, one column per version, for a side-by-side table."""
    return [{"": label, **{e.version: getter(e) for e in evaluations}} for label, getter in _COMPARE]


def version_rows(registry: Registry) -> list[dict]:
    """Every registered version, newest first, with the figures needed to choose between them."""
    try:
        current = registry.current_version()
    except ModelError:
        current = None
    try:
        history = registry.history()
    except ModelError:
        history = []
    rows = []
    for meta in reversed(registry.versions()):
        summary = meta.get("metrics") or {}
        version = meta["version"]
        if version == current:
            status = "in use"
        elif version in history:
            status = "previously in use"
        else:
            status = "not promoted"
        rows.append(
            {
                "version": version,
                "status": status,
                "created": str(meta.get("created", ""))[:19].replace("T", " "),
                "ROC AUC": summary.get("roc_auc"),
                "AUC 95% CI": _interval_text(summary.get("roc_auc_ci")),
                "sensitivity": summary.get("sensitivity"),
                "specificity": summary.get("specificity"),
                "threshold": meta.get("threshold"),
                "test images": summary.get("test_images"),
                "WHO minimum": _yes_no(summary.get("who_minimum_met")),
                "training data": meta.get("data_path", ""),
            }
        )
    return rows


def _interval_text(interval) -> str:
    if not interval or len(interval) != 2 or None in interval:
        return ""
    return f"{interval[0]:.3f}–{interval[1]:.3f}"


# --------------------------------------------------------------------------------- retrain jobs

FORM_DEFAULTS = {
    "epochs": 30,
    "batch_size": 32,
    "learning_rate": 0.001,
    "patience": 6,
    "min_sensitivity": 0.95,
    "gate_min_sensitivity": 0.90,
    "gate_min_specificity": 0.70,
    "gate_max_auc_drop": 0.02,
    "val_fraction": 0.15,
    "test_fraction": 0.2,
    "seed": 42,
}


def retrain_form_defaults(params: dict) -> dict:
    """The Retrain form's starting values, taken from params.yaml."""
    train = params.get("train") or {}
    ingest = params.get("ingest") or {}
    gate = params.get("gate") or {}
    threshold = train.get("threshold") or {}
    values = dict(FORM_DEFAULTS)
    values.update(
        {
            "data_path": str((params.get("data") or {}).get("path") or "data/sample"),
            "epochs": int(train.get("epochs", values["epochs"])),
            "batch_size": int(train.get("batch_size", values["batch_size"])),
            "learning_rate": float(train.get("learning_rate", values["learning_rate"])),
            "patience": int(train.get("patience", values["patience"])),
            "min_sensitivity": float(threshold.get("min_sensitivity", values["min_sensitivity"])),
            "gate_min_sensitivity": float(gate.get("min_sensitivity", values["gate_min_sensitivity"])),
            "gate_min_specificity": float(gate.get("min_specificity", values["gate_min_specificity"])),
            "gate_max_auc_drop": float(gate.get("max_auc_drop", values["gate_max_auc_drop"])),
            "val_fraction": float(ingest.get("val_fraction", values["val_fraction"])),
            "test_fraction": float(ingest.get("test_fraction", values["test_fraction"])),
            "seed": int(ingest.get("seed", values["seed"])),
        }
    )
    return values


def params_from_form(params: dict, values: dict) -> dict:
    """params.yaml with the form's values written into their sections (a deep copy; the file is untouched)."""
    result = json.loads(json.dumps(params))
    data = result.setdefault("data", {})
    train = result.setdefault("train", {})
    ingest = result.setdefault("ingest", {})
    gate = result.setdefault("gate", {})
    data["path"] = str(values["data_path"])
    train.update(
        epochs=int(values["epochs"]),
        batch_size=int(values["batch_size"]),
        learning_rate=float(values["learning_rate"]),
        patience=int(values["patience"]),
        seed=int(values["seed"]),
    )
    threshold = train.setdefault("threshold", {})
    threshold["min_sensitivity"] = float(values["min_sensitivity"])
    ingest.update(
        val_fraction=float(values["val_fraction"]),
        test_fraction=float(values["test_fraction"]),
        seed=int(values["seed"]),
    )
    gate.update(
        min_sensitivity=float(values["gate_min_sensitivity"]),
        min_specificity=float(values["gate_min_specificity"]),
        max_auc_drop=float(values["gate_max_auc_drop"]),
    )
    return result


def check_dataset_path(text: str) -> Path:
    """The dataset folder or zip a user typed, resolved like params.yaml paths; clear error if absent."""
    from cxr_core.config import resolve_data_path

    text = (text or "").strip()
    if not text:
        raise DatasetError("Enter the path of a dataset folder or .zip file.")
    path = resolve_data_path(text)
    if not path.exists():
        raise DatasetError(f"There is no file or folder at {path} on the server.")
    if path.is_file() and path.suffix.lower() != ".zip":
        raise DatasetError(f"{path} is a file; give a dataset folder or a .zip archive.")
    return path


STAGE_LABELS = {
    "ingest": "Reading and checking images",
    "train": "Training",
    "evaluate": "Evaluating on the held-out test images",
    "register": "Registering the candidate model",
}
STATE_LABELS = {
    "starting": "starting",
    "running": "running",
    "succeeded": "finished",
    "failed": "failed",
    "cancelled": "cancelled",
}
_STAGE_SPAN = {"ingest": (0.0, 0.1), "train": (0.1, 0.9), "evaluate": (0.9, 0.97), "register": (0.97, 1.0)}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    seconds = max(0, int(round(float(seconds))))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def job_view(status: dict, now: float | None = None) -> dict:
    """A job's status as the progress panel shows it: stage, fraction done, epoch, loss, val AUC, ETA."""
    state = status.get("state", "failed")
    active = state in ("starting", "running")
    if active and status.get("created_ts"):
        elapsed = (time.time() if now is None else now) - float(status["created_ts"])
    else:
        elapsed = status.get("elapsed_seconds")
    progress = status.get("progress") or {}
    stage = status.get("stage") or progress.get("stage")
    fraction = 0.0
    if state == "succeeded":
        fraction = 1.0
    elif stage in _STAGE_SPAN:
        start, end = _STAGE_SPAN[stage]
        within = 0.0
        if stage == "train" and progress.get("epochs"):
            within = min(1.0, (progress.get("epoch") or 0) / progress["epochs"])
        elif stage == "ingest" and progress.get("total"):
            within = min(1.0, (progress.get("done") or 0) / progress["total"])
        fraction = start + (end - start) * within
    train_event = stage == "train" and progress.get("epoch") is not None
    detail = ""
    if stage == "ingest" and progress.get("total"):
        detail = f"{progress.get('done') or 0} of {progress['total']} images read"
    elif stage == "train" and not train_event:
        detail = "first epoch under way"
    return {
        "id": status.get("id"),
        "state": state,
        "state_label": STATE_LABELS.get(state, state),
        "active": active,
        "stage": stage,
        "stage_label": STAGE_LABELS.get(stage, stage or "waiting to start"),
        "fraction": round(fraction, 3),
        "epoch": progress.get("epoch") if train_event else None,
        "epochs": progress.get("epochs") if train_event else None,
        "loss": progress.get("loss") if train_event else None,
        "val_auc": progress.get("val_auc") if train_event else None,
        "eta": fmt_duration(progress.get("eta_seconds")) if train_event else None,
        "detail": detail,
        "elapsed": fmt_duration(elapsed) if elapsed is not None else None,
        "error": status.get("error"),
        "created": status.get("created"),
        "finished": status.get("finished"),
        "data_path": status.get("data_path"),
    }


def gate_view(status: dict) -> dict | None:
    """The quality gate's verdict on a finished job's candidate, or None when there is none (yet)."""
    result = status.get("result") or {}
    if status.get("state") != "succeeded" or not result.get("version"):
        return None
    gate = result.get("gate") or {}
    return {
        "version": result["version"],
        "compared_with": result.get("compared_with"),
        "passed": bool(gate.get("passed")),
        "reasons": list(gate.get("reasons") or []),
        "promoted": bool(result.get("promoted")),
        "metrics": result.get("metrics") or {},
    }


def history_rows(jobs: list[dict]) -> list[dict]:
    rows = []
    for status in jobs:
        gate = gate_view(status)
        rows.append(
            {
                "job": status.get("id"),
                "state": STATE_LABELS.get(status.get("state"), status.get("state")),
                "started": str(status.get("created", ""))[:19].replace("T", " "),
                "finished": str(status.get("finished") or "")[:19].replace("T", " "),
                "dataset": status.get("data_path", ""),
                "candidate": gate["version"] if gate else "",
                "quality gate": ("passed" if gate["passed"] else "failed") if gate else "",
                "message": status.get("error") or "",
            }
        )
    return rows
