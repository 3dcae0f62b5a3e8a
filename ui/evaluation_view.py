"""The Evaluation page's view-model: a registry version's evaluation artifacts read back, the tables,
the threshold explorer at a clinic's prevalence, and the gallery of test films the model got wrong.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr_core import metrics
from cxr_core.errors import CxrError, DatasetError
from cxr_core.fsutil import read_json_or_empty
from cxr_core.imaging.display import display_gray
from cxr_core.pipeline.dataset_roots import locate_recorded_dataset
from cxr_core.pipeline.evaluate import dataset_root
from cxr_core.registry.card import LOSO_FILE, LOSO_REFERENCE_FILE
from cxr_core.registry.store import Registry
from cxr_core.settings import PROJECT_ROOT, Layout, dataset_roots, resolve_data_path

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
    loso: dict | None = None  # leave-one-source-out report of the version's recipe, when it was run
    loso_reference: dict | None = None  # the same for the original reference CNN

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
    report = read_json_or_empty(model_dir / Layout.METRICS)
    if not report:
        problems.append("metrics.json is missing; only the summary recorded at registration is shown")
        report = metadata.get("metrics") or {}
    plots = {}
    for name in PLOTS:
        try:
            data = json.loads((model_dir / Layout.PLOTS / f"{name}.json").read_text(encoding="utf-8"))
            plots[name] = data if isinstance(data, list) else []
        except (OSError, ValueError):
            plots[name] = []
    predictions = read_predictions(model_dir / Layout.PREDICTIONS)
    if not predictions:
        problems.append(
            "predictions.csv is missing, so the threshold explorer and error gallery are unavailable"
        )
    try:
        card = (model_dir / Layout.CARD).read_text(encoding="utf-8")
    except OSError:
        card = None
    return Evaluation(
        version, model_dir, metadata, report, plots, predictions, card, problems,
        loso=read_json_or_empty(model_dir / LOSO_FILE) or None,
        loso_reference=read_json_or_empty(model_dir / LOSO_REFERENCE_FILE) or None,
    )  # fmt: skip


def _spread_text(cell: dict | None, percent: bool = False) -> str:
    if not cell:
        return "n/a"
    show = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.3f}")
    if cell.get("n", 1) == 1:
        return show(cell["mean"])
    return f"{show(cell['mean'])} ({show(cell['min'])}–{show(cell['max'])})"


def unseen_hospital_rows(evaluation: Evaluation) -> list[dict]:
    """ "At a hospital it never saw": the LOSO table (mean and range over seeds), reference CNN beside it."""
    if not evaluation.loso:
        return []
    rows = []
    within = (evaluation.loso.get("summary") or {}).get("within", {})
    reference = ((evaluation.loso_reference or {}).get("summary") or {}).get("loso", {})
    for source, cell in sorted((evaluation.loso.get("summary") or {}).get("loso", {}).items()):
        rows.append({
            "hospital left out": source,
            "films (TB)": f"{cell['n']} ({cell['n_tb']})",
            "ROC AUC": _spread_text(cell["roc_auc"]),
            "sensitivity": _spread_text(cell["sensitivity"], percent=True),
            "specificity": _spread_text(cell["specificity"], percent=True),
            "reference CNN AUC": _spread_text(reference.get(source, {}).get("roc_auc")),
            "AUC when seen in training": _spread_text(within.get(source, {}).get("roc_auc")),
        })  # fmt: skip
    return rows


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
    film_shape: tuple[int, int] | None = None  # the film's own size (boxes are in its pixels)


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
    for base in (dataset_root(resolve_data_path(data_root)) if data_root else None, PROJECT_ROOT):
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
    from cxr_core.modelling.gradcam import overlay
    from cxr_core.pipeline.datasets import Record, read_record_bytes

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
            entry.film_shape = item.image.pixels.shape[:2]
    return entries


# --------------------------------------------------------------------------------- can it be trusted?

MIN_TEST_FILMS = 30
MIN_PER_CLASS = 10


def test_counts(evaluation: Evaluation) -> tuple[int | None, int | None]:
    """(films, films with TB) in the test split: from the stored predictions, else the recorded summary."""
    if evaluation.predictions:
        return len(evaluation.predictions), int(evaluation.labels.sum())
    n, tb = evaluation.metrics.get("n"), evaluation.metrics.get("n_positive")
    return (int(n) if n is not None else None), (int(tb) if tb is not None else None)


def too_few_test_films(evaluation: Evaluation) -> str | None:
    """'too few test films (n=4)' when the split cannot support any figure; None when it is big enough.

    Below 30 films, or 10 of either class, a sensitivity moves by 10 points per film and a bootstrap
    interval collapses onto the point estimate ("AUC 1.000 (95% CI 1.000–1.000)" from 4 films).
    """
    n, tb = test_counts(evaluation)
    if n is None:
        return None
    normal = n - tb if tb is not None else None
    if n < MIN_TEST_FILMS or (tb is not None and min(tb, normal) < MIN_PER_CLASS):
        return f"too few test films (n={n})"
    return None


def trust_warnings(evaluation: Evaluation) -> list[str]:
    """Why the figures of this version cannot be taken at face value, most serious first."""
    found = []
    few = too_few_test_films(evaluation)
    if few:
        n, tb = test_counts(evaluation)
        classes = f": {tb} with TB, {n - tb} without" if tb is not None else ""
        found.append(
            f"Figures withheld: {few}{classes}. At least {MIN_TEST_FILMS} test films with "
            f"{MIN_PER_CLASS} of each class are needed before sensitivity, specificity or AUC mean anything."
        )
    confound = site_confound_warning(evaluation)
    if confound:
        found.append(confound)
    return found


def who_badge(evaluation: Evaluation) -> tuple[str, str] | None:
    """('met'|'not met', caption) for the WHO minimum, or None when the data cannot support a verdict."""
    if trust_warnings(evaluation):
        return None
    met = evaluation.metrics.get("who_minimum_met")
    return ("met" if met else "not met"), "for a TB screening test"


# --------------------------------------------------------------------------------- honest numbers


def fmt_pct(value: float | None, digits: int = 1) -> str:
    """A percentage that never rounds to a certainty it is not: 0.9996 -> '> 99.9%', 0.0004 -> '< 0.1%'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    step = 10.0**-digits
    pct = value * 100.0
    if pct == 0.0 or pct == 100.0:
        return f"{pct:.0f}%"
    if pct < step:
        return f"< {step:.{digits}f}%"
    if pct > 100.0 - step:
        return f"> {100.0 - step:.{digits}f}%"
    shown = f"{pct:.{digits}f}"
    if float(shown) in (0.0, 100.0):  # e.g. 99.96 -> '100.0'
        return f"> {100.0 - step:.{digits}f}%" if pct > 50 else f"< {step:.{digits}f}%"
    return f"{shown}%"


def fmt_count(value: float) -> str:
    """An expected count per 1,000 people: whole numbers from 10 up, one decimal below, never a false 0."""
    if value == 0:
        return "0"
    if value < 0.1:
        return "< 0.1"
    if value < 10:
        return f"{value:.1f}"
    return f"{value:.0f}"


# --------------------------------------------------------------------------------- a new clinic first

SMALL_N_FILMS = MIN_TEST_FILMS  # below this many films (or MIN_PER_CLASS of a class) a row is flagged small


def _counts(
    n: int, n_tb: int, sensitivity: float | None, specificity: float | None
) -> tuple[int, int, int, int]:
    """(tp, fn, tn, fp) back from a run's rates and class counts (the rates were counted on whole films)."""
    normal = n - n_tb
    tp = round((sensitivity or 0.0) * n_tb) if n_tb else 0
    tn = round((specificity or 0.0) * normal) if normal else 0
    return tp, n_tb - tp, tn, normal - tn


def small_n_notice(n: int | None, n_tb: int | None) -> str:
    """'' for a row large enough to read, else why its figures move a lot with one film."""
    if n is None:
        return ""
    normal = n - (n_tb or 0)
    if n < SMALL_N_FILMS or (n_tb is not None and min(n_tb, normal) < MIN_PER_CLASS):
        return f"small: {n} films ({n_tb} TB): one film moves a rate by {100 / max(1, min(n_tb or n, normal or n)):.0f} points"
    return ""


def new_clinic_estimate(evaluation: Evaluation) -> dict | None:
    """The figure a new clinic should expect: every held-out hospital's films pooled, scored by the recipe
    trained without that hospital (leave-one-source-out).

    Two different uncertainties are kept apart, because brackets that look alike were read as one:
    the 95% CI over films (Wilson, on the pooled counts, averaged over seeds) says how much the figure
    could move with other films; the seed spread (lowest and highest over the training seeds) says how
    much it moves when the same recipe is trained again. None when LOSO was not run for this version.
    """
    runs = [run for run in (evaluation.loso or {}).get("runs") or [] if run.get("kind") == "loso"]
    if not runs:
        return None
    per_seed: dict[int, list[int]] = {}
    hospitals = set()
    for run in runs:
        for source, cell in (run.get("test") or {}).items():
            hospitals.add(source)
            tp, fn, tn, fp = _counts(
                cell["n"], cell["n_tb"], cell.get("sensitivity"), cell.get("specificity")
            )
            totals = per_seed.setdefault(run.get("seed", 0), [0, 0, 0, 0])
            for i, value in enumerate((tp, fn, tn, fp)):
                totals[i] += value
    seeds = sorted(per_seed)
    sens = [t[0] / (t[0] + t[1]) if t[0] + t[1] else None for t in per_seed.values()]
    spec = [t[2] / (t[2] + t[3]) if t[2] + t[3] else None for t in per_seed.values()]
    mean = [float(np.mean([c[i] for c in per_seed.values()])) for i in range(4)]
    tp, fn, tn, fp = mean
    with_tb, without = round(tp + fn), round(tn + fp)
    sensitivity = tp / (tp + fn) if tp + fn else None
    specificity = tn / (tn + fp) if tn + fp else None
    aucs = {
        source: cell["roc_auc"]["mean"]
        for source, cell in ((evaluation.loso.get("summary") or {}).get("loso") or {}).items()
        if cell.get("roc_auc")
    }
    worst = min(aucs, key=aucs.get) if aucs else None
    return {
        "hospitals": sorted(hospitals),
        "seeds": seeds,
        "films": with_tb + without,
        "with_tb": with_tb,
        "sensitivity": sensitivity,
        "sensitivity_ci": list(metrics.wilson_interval(round(tp), with_tb)),
        "sensitivity_seed_range": _range(sens),
        "specificity": specificity,
        "specificity_ci": list(metrics.wilson_interval(round(tn), without)),
        "specificity_seed_range": _range(spec),
        "worst_auc": (worst, aucs[worst]) if worst else None,
        "who_minimum_met": metrics.who_minimum_met(sensitivity, specificity),
    }


def _range(values: list[float | None]) -> list[float] | None:
    values = [v for v in values if v is not None]
    return [min(values), max(values)] if values else None


def fmt_seed_range(spread, percent: bool = True, seeds: int | None = None) -> str:
    """'seed spread 85.2%–86.9% (3 training seeds)': a range over retrainings, never to be read as a CI."""
    if not spread:
        return ""
    show = (lambda v: f"{v * 100:.1f}%") if percent else (lambda v: f"{v:.3f}")
    over = f" ({seeds} training seeds)" if seeds else ""
    return f"seed spread {show(spread[0])}–{show(spread[1])}{over}"


def unseen_hospital_table(evaluation: Evaluation) -> list[dict]:
    """Per held-out hospital: mean over seeds with the 95% CI over films, the seed spread apart, small n said."""
    if not evaluation.loso:
        return []
    summary = (evaluation.loso.get("summary") or {}).get("loso") or {}
    runs = [run for run in evaluation.loso.get("runs") or [] if run.get("kind") == "loso"]
    rows = []
    for source, cell in sorted(summary.items()):
        n, n_tb = cell["n"], cell["n_tb"]
        tested = [run["test"][source] for run in runs if source in (run.get("test") or {})]
        auc_cis = [t.get("roc_auc_ci") for t in tested if t.get("roc_auc_ci") and None not in t["roc_auc_ci"]]
        auc_ci = (
            [float(np.mean([c[0] for c in auc_cis])), float(np.mean([c[1] for c in auc_cis]))]
            if auc_cis
            else None
        )
        sens, spec = (cell.get("sensitivity") or {}).get("mean"), (cell.get("specificity") or {}).get("mean")
        tp, _, tn, _ = _counts(n, n_tb, sens, spec)
        rows.append({
            "hospital left out": source,
            "films (TB)": f"{n} ({n_tb})",
            "ROC AUC (95% CI over films)": fmt_ci(cell["roc_auc"]["mean"], auc_ci) if cell.get("roc_auc") else "n/a",
            "sensitivity (95% CI)": fmt_ci(sens, metrics.wilson_interval(tp, n_tb), percent=True),
            "specificity (95% CI)": fmt_ci(spec, metrics.wilson_interval(tn, n - n_tb), percent=True),
            "seed spread (sens. / spec.)": _seed_pair(cell),
            "notice": small_n_notice(n, n_tb),
        })  # fmt: skip
    return rows


def _seed_pair(cell: dict) -> str:
    def one(spread):
        if not spread or spread.get("n", 1) == 1:
            return "n/a"
        return f"{spread['min'] * 100:.1f}–{spread['max'] * 100:.1f}%"

    return f"{one(cell.get('sensitivity'))} / {one(cell.get('specificity'))}"


def per_source_table(evaluation: Evaluation) -> list[dict]:
    """The pooled test split per data source, each figure with its 95% CI over films and a small-n notice."""
    rows = []
    for source, summary in (evaluation.metrics.get("per_source") or {}).items():
        op = summary.get("operating_point", summary)
        n, n_tb = summary.get("n"), summary.get("n_positive")
        rows.append({
            "source": source,
            "films (TB)": f"{n} ({n_tb})",
            "ROC AUC (95% CI)": fmt_ci(summary.get("roc_auc"), summary.get("roc_auc_ci")),
            "sensitivity (95% CI)": fmt_ci(op.get("sensitivity"), op.get("sensitivity_ci"), percent=True),
            "specificity (95% CI)": fmt_ci(op.get("specificity"), op.get("specificity_ci"), percent=True),
            "notice": small_n_notice(n, n_tb),
        })  # fmt: skip
    return rows


# --------------------------------------------------------------------------------- compare like with like


def _film_keys(evaluation: Evaluation) -> dict[tuple[str, str], dict]:
    return {(row["path"], row["member"] or ""): row for row in evaluation.predictions}


def same_films_comparison(first: Evaluation, second: Evaluation) -> dict:
    """Whether two versions were tested on the same films, and their figures on the films both were tested on.

    Each version's own test split can differ (another dataset, another split seed): an AUC of 0.992 on
    one set beside 0.937 on another says nothing about which model is better. On the shared films both
    versions are scored at their own thresholds, so that row compares like with like.
    """
    a, b = _film_keys(first), _film_keys(second)
    shared = sorted(set(a) & set(b))
    result = {"same": bool(a) and set(a) == set(b), "films_a": len(a), "films_b": len(b), "shared": len(shared),
              "rows": []}  # fmt: skip
    if not shared:
        return result
    labels = np.array([a[key]["label"] for key in shared], dtype=np.int64)
    if min(int(labels.sum()), len(labels) - int(labels.sum())) < 1:
        return result
    few = small_n_notice(len(labels), int(labels.sum()))
    figures = {}
    for evaluation, rows in ((first, a), (second, b)):
        probabilities = np.array([rows[key]["probability"] for key in shared], dtype=np.float64)
        report = metrics.evaluate(labels, probabilities, evaluation.threshold, n_boot=200)
        figures[evaluation.version] = report
    for label, getter in (
        ("ROC AUC", lambda r: fmt_ci(r.get("roc_auc"), r.get("roc_auc_ci"))),
        ("Sensitivity", lambda r: fmt_ci(r.get("sensitivity"), r.get("sensitivity_ci"), percent=True)),
        ("Specificity", lambda r: fmt_ci(r.get("specificity"), r.get("specificity_ci"), percent=True)),
    ):
        result["rows"].append({"": label, **{v: getter(r) for v, r in figures.items()}})
    result["notice"] = few
    return result


# ----------------------------------------------------------------------------- where the evidence lies


def _share(value) -> str:
    return "–" if value is None else f"{value:.0%}"


def evidence_rows(evaluation: Evaluation) -> list[dict]:
    """The test split's evidence figures per source and class (metrics.json ``evidence_where``)."""
    where = evaluation.metrics.get("evidence_where") or {}
    rows = []
    for key, values in sorted(where.items(), key=lambda item: (item[0].startswith("all/"), item[0])):
        if not isinstance(values, dict) or "/" not in key:
            continue
        source, klass = key.split("/", 1)
        rows.append({
            "source": "all sources" if source == "all" else source, "class": klass, "films": values.get("films"),
            "Grad-CAM mass inside the lungs": _share(values.get("lung_share")),
            "peak inside the lungs": _share(values.get("peak_in_lungs")),
            "mass in the film's outer band": _share(values.get("outer_band")),
        })  # fmt: skip
    return rows


def held_out_evidence_rows(evaluation: Evaluation) -> list[dict]:
    """The same figures on each hospital the recipe never saw (LOSO), means over seeds, with the audit."""
    summary = ((evaluation.loso or {}).get("summary") or {}).get("loso") or {}
    rows = []
    for source, cell in sorted(summary.items()):
        tb = cell.get("evidence_tb") or {}
        if not tb:
            continue
        rows.append({
            "held-out hospital": source,
            "TB films: mass inside the lungs": _share((tb.get("lung_share") or {}).get("mean")),
            "TB films: peak inside the lungs": _share((tb.get("peak_in_lungs") or {}).get("mean")),
            "ROC AUC (network)": _spread_text(cell.get("roc_auc")),
            "ROC AUC (shortcut audit)": _spread_text(cell.get("shortcut_auc")),
        })  # fmt: skip
    return rows


def lesion_summary(evaluation: Evaluation) -> str | None:
    """One sentence on the lesion test set: pointing game and mass on the radiologists' boxes."""
    lesion = (evaluation.metrics.get("evidence_where") or {}).get("lesion_test")
    if not lesion or lesion.get("pointing") is None:
        return None
    return (
        f"On the {lesion['films']} films of the lesion test set (TBX11K TB films no training run saw, boxes "
        f"drawn by radiologists) the map's peak lies on a lesion on {lesion['pointing']:.0%} of films; "
        f"{lesion['lesion_share']:.0%} of its mass lies on the boxes, against {lesion['uniform_share']:.0%} "
        f"for an evenly spread map ({lesion['lesion_vs_uniform']:.1f}x)."
    )


def robustness_summary(evaluation: Evaluation) -> str | None:
    """From shares, not counts: without metrics.json the page shows the summary kept at registration,
    which holds the shares the quality gate read and not the counts."""
    strips = evaluation.metrics.get("strips_and_markers") or {}
    if not strips.get("films") or strips.get("flipped_share") is None or strips.get("peak_on_strip_share") is None:
        return None
    films = int(strips["films"])
    maps = int(strips.get("maps_with_peak", films))  # the peak share's own denominator (blank maps left out)
    return (
        f"With a strip of 5–15 % of the height added on one edge (dark or bright) and a text marker burnt in, "
        f"{round(strips['flipped_share'] * films)} of {films} test decisions changed ({strips['flipped_share']:.1%}) "
        f"and the map's peak lay on the strip on {round(strips['peak_on_strip_share'] * maps)} of {maps} "
        f"({strips['peak_on_strip_share']:.1%})."
    )


def shortcut_rows(evaluation: Evaluation) -> list[dict]:
    """The shortcut audit (thumbnail + intensity statistics) beside the network, per two-class source."""
    shortcut = evaluation.metrics.get("shortcut") or {}
    return [
        {"test films": "all (pooled)" if key == "all" else key,
         "ROC AUC, network": fmt_ci(values.get("cnn_auc"), None),
         "ROC AUC, shortcut audit": fmt_ci(values.get("shortcut_auc"), None)}  # fmt: skip
        for key, values in sorted(shortcut.items(), key=lambda item: (item[0] == "all", item[0]))
        if isinstance(values, dict) and values.get("cnn_auc") is not None
    ]


def training_data_folder(evaluation: Evaluation) -> str | None:
    """Where the model's training dataset is on this machine (see ``locate_recorded_dataset``), or None.

    Found once per page run and passed to the galleries (and their cache keys), so data moved into
    place is picked up on the next run.
    """
    relative = tuple(row["path"] for row in evaluation.predictions if row["path"] and not os.path.isabs(row["path"]))
    try:
        located = locate_recorded_dataset(evaluation.metadata.get("data_path"), holds=relative[:3])
    except OSError:  # a folder the server may not read: the page says the data is not found, it does not fail
        return None
    return str(located) if located else None


def lesion_boxes_for(data_root: str | None) -> dict[str, list[tuple[int, int, int, int]]]:
    """Radiologists' boxes (``lesions.csv`` beside the dataset's manifest), keyed by the recorded path.

    ``data_root``: the dataset's folder on this machine (:func:`training_data_folder`).
    """
    if not data_root:
        return {}
    found = dataset_root(resolve_data_path(data_root)) / "lesions.csv"
    if not found.is_file():
        return {}
    boxes: dict[str, list] = {}
    with open(found, newline="") as handle:
        for row in csv.DictReader(handle):
            boxes.setdefault(row["path"], []).append(tuple(int(float(row[k])) for k in ("xmin", "ymin", "xmax", "ymax")))
    return boxes


def missing_lesion_boxes(evaluation: Evaluation, data_root: str | None) -> str | None:
    """Why the gallery of radiologists' boxes cannot be drawn here, when the evaluation measured them.

    The boxes are read from the training dataset, which may not be on this machine (or not where the
    model recorded it): without this, the page would drop the gallery without a word.
    """
    lesion = (evaluation.metrics.get("evidence_where") or {}).get("lesion_test")
    if not lesion or not lesion.get("films"):
        return None
    recorded = evaluation.metadata.get("data_path")
    if lesion_boxes_for(data_root):
        return None
    roots = os.pathsep.join(str(root) for root in dataset_roots()) or "none configured"
    return (
        f"The radiologists' boxes of the {lesion['films']} lesion test films cannot be drawn here: no "
        f"lesions.csv was found with the model's training data (recorded as {recorded or 'unknown'}), "
        f"nor under the configured dataset folders ({roots}). Put the dataset in one of them, or add its "
        "folder to CXR_DATASET_ROOTS; the figures above were measured at training and stand."
    )


def draw_boxes(picture: np.ndarray, boxes, film_shape: tuple[int, int]) -> np.ndarray:
    """The radiologists' boxes in white on a picture shown at another size than the film."""
    import cv2

    out = picture.copy()
    scale_y, scale_x = out.shape[0] / film_shape[0], out.shape[1] / film_shape[1]
    thickness = max(1, round(out.shape[0] / 256))
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(out, (round(x0 * scale_x), round(y0 * scale_y)), (round(x1 * scale_x), round(y1 * scale_y)),
                      (255, 255, 255), thickness)  # fmt: skip
    return out


def lesion_gallery(
    predictor, evaluation: Evaluation, alpha: float = 0.4, limit: int = 6, data_root: str | None = None
) -> list[GalleryEntry]:
    """Test films with radiologists' boxes: the film with the boxes beside the model's map with them.

    Test films only (never trained on); the first ``limit`` in the order of predictions.csv.
    ``data_root``: the dataset's folder on this machine; found from the model's record when not given.
    """
    data_root = data_root or training_data_folder(evaluation)
    boxes = lesion_boxes_for(data_root)
    rows = [row for row in evaluation.predictions if row["path"] in boxes][:limit]
    entries = error_gallery(predictor, rows, alpha=alpha, limit=limit, data_root=data_root)
    for entry, row in zip(entries, rows, strict=True):
        entry.kind = "TB film with radiologists' boxes"
        if entry.image is None or entry.overlay is None:
            continue
        film_shape = entry.film_shape or entry.image.shape[:2]
        entry.image = draw_boxes(np.dstack([entry.image] * 3) if entry.image.ndim == 2 else entry.image,
                                 boxes[row["path"]], film_shape)  # fmt: skip
        entry.overlay = draw_boxes(entry.overlay, boxes[row["path"]], film_shape)
    return entries
