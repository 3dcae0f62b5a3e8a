"""The Model page's view-model: registry versions side by side, and the model card made fit for the page."""

from __future__ import annotations

from cxr_core.errors import ModelError
from cxr_core.registry.store import Registry
from ui.evaluation_view import Evaluation, fmt_ci, too_few_test_films

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


# Measured on the test split: withheld, like on the Evaluation page, when the split is too small.
_FIGURES = {
    "ROC AUC", "PR AUC", "Sensitivity", "Specificity", "PPV (test set)", "NPV (test set)", "Accuracy",
    "WHO minimum met", "Brier score", "Calibration error (ECE)",
}  # fmt: skip


def compare_rows(evaluations: list[Evaluation]) -> list[dict]:
    """One row per figure, one column per version, for a side-by-side table."""

    def cell(label, getter, evaluation):
        few = too_few_test_films(evaluation) if label in _FIGURES else None
        return few or getter(evaluation)

    return [{"": label, **{e.version: cell(label, g, e) for e in evaluations}} for label, g in _COMPARE]


def version_rows(registry: Registry) -> list[dict]:
    """Every usable registered version, newest first, with the figures needed to choose between them;
    candidates refused by the gate are left out (see :func:`ui.retrain_view.refused_versions`)."""
    try:
        current = registry.current_version()
    except ModelError:
        current = None
    try:
        history = registry.history()
    except ModelError:
        history = []
    from ui.retrain_view import refused_versions

    refused = refused_versions(registry)
    rows = []
    for meta in reversed(registry.versions()):
        summary = meta.get("metrics") or {}
        version = meta["version"]
        if version in refused:  # failed the gate: listed apart on the Retrain page, never as a usable version
            continue
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


def audit_rows(registry: Registry, limit: int = 200) -> list[dict]:
    """The audit trail as the Model page lists it, newest first."""
    from cxr_core.registry import audit

    rows = []
    for entry in audit.read(registry.root, limit=limit):
        detail = entry.get("reasons") or entry.get("job") or ""
        rows.append({
            "time": str(entry.get("time", "")).replace("T", " ")[:19],
            "action": str(entry.get("action", "")).replace("_", " "),
            "version": entry.get("version") or "",
            "before": entry.get("previous") or "",
            "by": entry.get("actor") or "",
            "outcome": entry.get("outcome") or "",
            "detail": "; ".join(detail) if isinstance(detail, list) else str(detail),
        })  # fmt: skip
    return rows
