"""Screening metrics for the TB classifier, built on scikit-learn.

Everything here is pure NumPy / scikit-learn so the registry, the quality gate, the DVC stages and the
dashboard can all import it without TensorFlow or streamlit, and so every number a clinician sees
comes from one implementation. scikit-learn supplies the standard metrics; this module adds only what
it lacks: bootstrap and Wilson confidence intervals, expected calibration error, operating-threshold
rules, PPV/NPV at another prevalence and the WHO target-product-profile check.

Conventions: label 1 is Tuberculosis, 0 is Normal; a case is called TB when ``probability >= threshold``
(the same rule ``roc_curve`` uses, so a threshold taken from it reproduces its operating point). A
metric that is undefined on the data given (sensitivity without TB cases, AUC with one class, a ratio
with a zero denominator) is ``None`` -- never 0 or NaN -- so it serialises as JSON ``null`` and cannot
be mistaken for a real, terrible result.
"""

from __future__ import annotations

import math
import warnings
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    classification_report,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from cxr_core.settings import WHO_MIN_SENSITIVITY, WHO_MIN_SPECIFICITY

CLASS_NAMES = ("Normal", "Tuberculosis")
POSITIVE_LABEL = 1

THRESHOLD_RULES = ("sensitivity_floor", "sensitivity_bound", "youden", "fixed")
FALLBACK_THRESHOLD = 0.5

# Bootstrap resamples are built as (chunk, n) index matrices; this caps a chunk at ~2M indices so a
# large test set does not need gigabytes for 1000 resamples at once.
_CHUNK_ELEMENTS = 2_000_000
# A float tolerance for "sensitivity >= floor": tp/n_pos is exact for the counts that matter, but a
# floor such as 0.95 written in params.yaml should not be missed by one ulp.
_FLOOR_TOLERANCE = 1e-12

ArrayLike = Sequence[float] | np.ndarray


# --------------------------------------------------------------------------------------------------
# input handling


def _as_arrays(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate once so every metric below can assume clean 0/1 labels and probabilities in [0, 1]."""
    y = np.asarray(y_true)
    p = np.asarray(y_prob, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1:
        raise ValueError("y_true and y_prob must be one-dimensional")
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} labels but y_prob has {p.shape[0]} probabilities")
    if y.shape[0] == 0:
        raise ValueError("no samples to evaluate")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must contain only 0 (Normal) and 1 (Tuberculosis)")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError("y_prob must contain finite probabilities in [0, 1]")
    return y.astype(np.int64), p


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def _finite_threshold(threshold: float, y_prob: np.ndarray) -> float:
    """roc_curve starts at +inf ("call nobody TB"); JSON and YAML need a finite number meaning the same."""
    if np.isfinite(threshold):
        return float(threshold)
    top = float(y_prob.max()) if y_prob.size else 1.0
    return max(1.0, float(np.nextafter(top, np.inf)))


def _jsonable(obj: Any) -> Any:
    """Strip NumPy types and non-finite floats so json.dumps(..., allow_nan=False) always succeeds."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


# --------------------------------------------------------------------------------------------------
# point metrics


def classification_report_table(y_true: ArrayLike, y_pred: ArrayLike) -> dict:
    """sklearn's report with both classes always listed, so a one-class subset still has a fixed shape."""
    y = np.asarray(y_true).astype(np.int64)
    yp = np.asarray(y_pred).astype(np.int64)
    report = classification_report(
        y, yp, labels=[0, 1], target_names=list(CLASS_NAMES), output_dict=True, zero_division=0
    )
    for row in report.values():
        if isinstance(row, dict) and "support" in row:
            row["support"] = int(row["support"])
    return _jsonable(report)


def _counts(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    pred = (p >= threshold).astype(np.int64)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return int(tn), int(fp), int(fn), int(tp)


def operating_point(y_true: ArrayLike, y_prob: ArrayLike, threshold: float) -> dict:
    """Counts and rates at one threshold; undefined rates are None (JSON null), never 0."""
    y, p = _as_arrays(y_true, y_prob)
    tn, fp, fn, tp = _counts(y, p, threshold)
    return {
        "threshold": float(threshold),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def ppv_npv_at_prevalence(
    sensitivity: float, specificity: float, prevalence: float
) -> tuple[float | None, float | None]:
    """Bayes: the test set's PPV/NPV are only valid at its own prevalence, not a clinic's."""
    checks = (("sensitivity", sensitivity), ("specificity", specificity), ("prevalence", prevalence))
    for name, value in checks:
        if value is None or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}")
    sens, spec, prev = float(sensitivity), float(specificity), float(prevalence)
    ppv = _ratio(sens * prev, sens * prev + (1.0 - spec) * (1.0 - prev))
    npv = _ratio(spec * (1.0 - prev), spec * (1.0 - prev) + (1.0 - sens) * prev)
    return ppv, npv


def who_minimum_met(sensitivity: float | None, specificity: float | None) -> bool:
    """An undefined sensitivity or specificity cannot meet the WHO minimum, so it counts as not met."""
    if sensitivity is None or specificity is None:
        return False
    return float(sensitivity) >= WHO_MIN_SENSITIVITY and float(specificity) >= WHO_MIN_SPECIFICITY


def _bin_ids(p: np.ndarray, n_bins: int) -> np.ndarray:
    # Exactly sklearn.calibration.calibration_curve's "uniform" binning (bins closed on the right, the
    # first also on the left), so the ECE and the plotted calibration curve describe the same bins.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], p)


def expected_calibration_error(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10) -> float:
    """ECE with equal-width bins weighted by count: the average gap between stated and observed risk."""
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    y, p = _as_arrays(y_true, y_prob)
    ids = _bin_ids(p, n_bins)
    sum_prob = np.bincount(ids, weights=p, minlength=n_bins)
    sum_true = np.bincount(ids, weights=y, minlength=n_bins)
    # |mean_prob - frac_pos| * count / n == |sum_prob - sum_true| / n, with no division by empty bins
    return float(np.abs(sum_prob - sum_true).sum() / y.size)


def _wilson_centre_half(rates, trials: int, alpha: float):
    """Centre and half-width of the Wilson score interval, for one observed rate or an array of them."""
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
    denom = 1.0 + z * z / trials
    centre = (rates + z * z / (2 * trials)) / denom
    half = z / denom * np.sqrt(rates * (1 - rates) / trials + z * z / (4 * trials * trials))
    return centre, half


def wilson_interval(successes: int, trials: int, alpha: float = 0.05) -> tuple[float | None, float | None]:
    """Wilson score interval: unlike the normal approximation it stays inside [0, 1] at 0% or 100%."""
    if trials <= 0:
        return None, None
    centre, half = _wilson_centre_half(successes / trials, trials, alpha)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def _wilson_lower(rates: np.ndarray, trials: int, alpha: float = 0.05) -> np.ndarray:
    """``wilson_interval``'s lower end for many observed rates over the same number of trials at once."""
    centre, half = _wilson_centre_half(rates, trials, alpha)
    return np.maximum(0.0, centre - half)


# --------------------------------------------------------------------------------------------------
# thresholds


@dataclass(frozen=True)
class ThresholdChoice:
    """A chosen threshold plus why, so metadata.json and the model card can state the rule used."""

    threshold: float
    rule: str
    reason: str
    sensitivity: float | None
    specificity: float | None

    def as_dict(self) -> dict:
        return _jsonable(asdict(self))


def _fallback(rule: str, why: str) -> ThresholdChoice:
    return ThresholdChoice(
        threshold=FALLBACK_THRESHOLD,
        rule=rule,
        reason=f"{why}; fell back to the default threshold {FALLBACK_THRESHOLD}",
        sensitivity=None,
        specificity=None,
    )


def select_threshold(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    *,
    rule: str = "sensitivity_floor",
    min_sensitivity: float = 0.95,
    fixed_threshold: float = FALLBACK_THRESHOLD,
) -> ThresholdChoice:
    """Pick the operating threshold by a rule named in params.yaml, and explain the choice.

    ``sensitivity_floor``: among thresholds whose sensitivity is at least ``min_sensitivity``, the one
    with the highest specificity; among equal specificities, the highest sensitivity (a screening test
    should not give up TB cases for nothing); only then the higher threshold. ``sensitivity_bound``: the
    same, but it is the lower end of the sensitivity's 95 % Wilson interval that must reach the floor. A
    threshold placed where the validation films give exactly the floor sits on a coin toss: a model as
    good as the last one then falls under the floor on the test split about half the time; the bound
    buys margin with specificity. ``youden``: maximise
    sensitivity + specificity - 1 (ties -> higher threshold). ``fixed``: ``fixed_threshold`` as given.
    Candidates are the distinct scores (roc_curve thresholds), so the choice is reproducible exactly.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; expected one of {', '.join(THRESHOLD_RULES)}")
    y, p = _as_arrays(y_true, y_prob)
    if rule == "fixed":
        if not 0.0 <= float(fixed_threshold) <= 1.0:
            raise ValueError(f"fixed_threshold must be in [0, 1], got {fixed_threshold!r}")
        op = operating_point(y, p, float(fixed_threshold))
        return ThresholdChoice(
            float(fixed_threshold),
            rule,
            f"fixed threshold {float(fixed_threshold)} from configuration",
            op["sensitivity"],
            op["specificity"],
        )
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        missing = "Tuberculosis" if n_pos == 0 else "Normal"
        return _fallback(rule, f"no {missing} cases in the data, so no threshold can be tuned")

    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    spec = 1.0 - fpr
    if rule in ("sensitivity_floor", "sensitivity_bound"):
        if not 0.0 <= float(min_sensitivity) <= 1.0:
            raise ValueError(f"min_sensitivity must be in [0, 1], got {min_sensitivity!r}")
        held = tpr if rule == "sensitivity_floor" else _wilson_lower(tpr, n_pos)
        ok = np.flatnonzero(held >= float(min_sensitivity) - _FLOOR_TOLERANCE)
        short = ok.size == 0  # too few TB films for any bound to reach the floor: the highest bound
        if short:  # (every TB film found), never an arbitrary fallback that may miss them
            ok = np.flatnonzero(held >= held.max() - _FLOOR_TOLERANCE)
        # lexsort: last key is primary -> max specificity, then max sensitivity, then max threshold
        best = ok[np.lexsort((-thresholds[ok], -tpr[ok], -spec[ok]))[0]]
        held_by = "sensitivity" if rule == "sensitivity_floor" else "the lower 95 % bound of sensitivity"
        bound = "" if rule == "sensitivity_floor" else f", lower bound {held[best]:.3f}"
        reason = (
            f"highest specificity with {held_by} >= {float(min_sensitivity):g} "
            f"(achieved sensitivity {tpr[best]:.3f}{bound}, specificity {spec[best]:.3f})"
        )
        if rule == "sensitivity_bound" and short:
            reason = (
                f"highest specificity that finds every TB film (with {n_pos} TB films no threshold's lower "
                f"95 % sensitivity bound reaches {float(min_sensitivity):g}; highest bound {held[best]:.3f}, "
                f"specificity {spec[best]:.3f})"
            )
    else:
        finite = np.flatnonzero(np.isfinite(thresholds))
        j = tpr[finite] - fpr[finite]
        best = finite[np.lexsort((-thresholds[finite], -j))[0]]
        reason = (
            f"maximum Youden index {j.max():.3f} (sensitivity {tpr[best]:.3f}, specificity {spec[best]:.3f})"
        )
    return ThresholdChoice(
        threshold=_finite_threshold(thresholds[best], p),
        rule=rule,
        reason=reason,
        sensitivity=float(tpr[best]),
        specificity=float(spec[best]),
    )


def threshold_table(y_true: ArrayLike, y_prob: ArrayLike) -> list[dict]:
    """Sensitivity/specificity at every distinct score, ascending, so a slider needs only a lookup.

    Counted directly with searchsorted rather than roc_curve so that a single-class set (a dashboard
    upload of only Normal films) still yields rows, with the undefined rate as None.
    """
    y, p = _as_arrays(y_true, y_prob)
    pos = np.sort(p[y == 1])
    neg = np.sort(p[y == 0])
    unique = np.unique(p)
    tp = pos.size - np.searchsorted(pos, unique, side="left")
    fp = neg.size - np.searchsorted(neg, unique, side="left")
    sens = tp / pos.size if pos.size else [None] * unique.size
    spec = 1.0 - fp / neg.size if neg.size else [None] * unique.size
    return _jsonable(
        [
            {"threshold": t, "sensitivity": se, "specificity": sp}
            for t, se, sp in zip(unique.tolist(), list(sens), list(spec), strict=True)
        ]
    )


def lookup_threshold_table(table: list[dict], threshold: float) -> dict:
    """The operating point at any threshold from a threshold_table, without the original scores.

    "prob >= t" selects the same cases as "prob >= the smallest distinct score that is >= t".
    """
    if not table:
        raise ValueError("threshold table is empty")
    keys = [row["threshold"] for row in table]
    i = bisect_left(keys, float(threshold))
    if i < len(table):
        row = table[i]
        return {
            "threshold": float(threshold),
            "sensitivity": row["sensitivity"],
            "specificity": row["specificity"],
        }
    # above every score: nobody is called TB
    return {
        "threshold": float(threshold),
        "sensitivity": None if table[0]["sensitivity"] is None else 0.0,
        "specificity": None if table[0]["specificity"] is None else 1.0,
    }


# --------------------------------------------------------------------------------------------------
# bootstrap


def _auc_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """ROC AUC of each row via the Mann-Whitney rank sum (ties count half), one call for all rows."""
    ranks = rankdata(p, axis=1)
    n_pos = y.sum(axis=1)
    n_neg = y.shape[1] - n_pos
    rank_sum = (ranks * y).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _ap_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Average precision of each row, matching sklearn's step-wise definition including tied scores.

    Every positive contributes 1/n_pos times the precision at the end of its tie group (all cases with
    a score >= its score), which is sklearn's sum over thresholds of (R_n - R_{n-1}) * P_n.
    """
    rows, n = y.shape
    order = np.argsort(-p, axis=1, kind="stable")
    ps = np.take_along_axis(p, order, axis=1)
    ys = np.take_along_axis(y, order, axis=1)
    precision = np.cumsum(ys, axis=1) / np.arange(1, n + 1)
    is_end = np.ones_like(ps, dtype=bool)
    is_end[:, :-1] = ps[:, :-1] != ps[:, 1:]
    end_index = np.where(is_end, np.arange(n), n)
    group_end = np.minimum.accumulate(end_index[:, ::-1], axis=1)[:, ::-1]
    precision_at_end = np.take_along_axis(precision, group_end, axis=1)
    n_pos = ys.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = (precision_at_end * ys).sum(axis=1) / n_pos
    return np.where((n_pos > 0) & (n_pos < n), ap, np.nan)


# metric functions that have a vectorised twin, and names accepted in place of a callable
_VECTORISED: dict[Any, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    roc_auc_score: _auc_rows,
    "roc_auc": _auc_rows,
    average_precision_score: _ap_rows,
    "average_precision": _ap_rows,
    "pr_auc": _ap_rows,
}


def _resamples(
    y: np.ndarray, n_boot: int, rng: np.random.Generator, stratified: bool
) -> Iterator[np.ndarray]:
    """Index matrices of bootstrap resamples, chunked; both the fast and the generic path use this."""
    n = y.size
    chunk = max(1, min(n_boot, _CHUNK_ELEMENTS // n))
    pos = np.flatnonzero(y == 1)
    neg = np.flatnonzero(y == 0)
    done = 0
    while done < n_boot:
        rows = min(chunk, n_boot - done)
        if stratified:
            # keep the class counts fixed, so every resample has both classes when the data does
            parts = [idx[rng.integers(0, idx.size, size=(rows, idx.size))] for idx in (pos, neg) if idx.size]
            yield np.concatenate(parts, axis=1)
        else:
            yield rng.integers(0, n, size=(rows, n))
        done += rows


def bootstrap_ci(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    metric_fn: Callable[[np.ndarray, np.ndarray], float] | str,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    *,
    stratified: bool = True,
    requires_both_classes: bool | None = None,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of ``metric_fn(y_true, y_prob)``; (None, None) when it cannot be estimated.

    Stratified by default (class counts fixed per resample), the usual choice for AUC in diagnostic
    accuracy studies: no resample is wasted on a single class. ``roc_auc_score`` and
    ``average_precision_score`` (or the names "roc_auc", "pr_auc") run vectorised over all resamples;
    any other callable is called per resample. Resamples where the metric is undefined (single class
    for AUC-type metrics, ValueError, NaN, None) are skipped; if more than half are skipped the
    interval is reported as undefined rather than computed from an unrepresentative minority.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be between 0 and 1")
    y, p = _as_arrays(y_true, y_prob)
    if n_boot <= 0:
        return None, None
    try:
        fast = _VECTORISED.get(metric_fn)
    except TypeError:  # an unhashable callable object simply has no vectorised twin
        fast = None
    if isinstance(metric_fn, str) and fast is None:
        raise ValueError(f"unknown metric name {metric_fn!r}; pass a callable or one of roc_auc, pr_auc")
    if requires_both_classes is None:
        requires_both_classes = fast is not None
    if requires_both_classes and (y.min() == y.max()):
        return None, None

    rng = np.random.default_rng(seed)
    values: list[np.ndarray] = []
    for idx in _resamples(y, n_boot, rng, stratified):
        yb, pb = y[idx], p[idx]
        if fast is not None:
            values.append(fast(yb, pb))
            continue
        out = np.full(idx.shape[0], np.nan)
        for r in range(idx.shape[0]):
            if requires_both_classes and yb[r].min() == yb[r].max():
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    v = metric_fn(yb[r], pb[r])
            except ValueError:
                continue
            if v is not None:
                out[r] = float(v)
        values.append(out)
    stats = np.concatenate(values)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0 or stats.size < n_boot / 2:
        return None, None
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


# --------------------------------------------------------------------------------------------------
# evaluation report and plot data


def _summary(
    y: np.ndarray, p: np.ndarray, threshold: float, n_boot: int, seed: int, alpha: float, n_bins: int
) -> dict:
    n = int(y.size)
    n_pos = int(y.sum())
    both = 0 < n_pos < n
    op = operating_point(y, p, threshold)
    tp, fp, tn, fn = op["tp"], op["fp"], op["tn"], op["fn"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        roc_auc = float(roc_auc_score(y, p)) if both else None
        pr_auc = float(average_precision_score(y, p)) if both else None
    return {
        "n": n,
        "n_positive": n_pos,
        "n_negative": n - n_pos,
        "prevalence": n_pos / n,
        "roc_auc": roc_auc,
        "roc_auc_ci": list(bootstrap_ci(y, p, "roc_auc", n_boot, seed, alpha)) if both else [None, None],
        "pr_auc": pr_auc,
        "pr_auc_ci": list(bootstrap_ci(y, p, "pr_auc", n_boot, seed, alpha)) if both else [None, None],
        "brier": float(brier_score_loss(y, p, pos_label=1)),
        "ece": expected_calibration_error(y, p, n_bins),
        **op,
        "sensitivity_ci": list(wilson_interval(tp, tp + fn, alpha)),
        "specificity_ci": list(wilson_interval(tn, tn + fp, alpha)),
        "ppv_ci": list(wilson_interval(tp, tp + fp, alpha)),
        "npv_ci": list(wilson_interval(tn, tn + fn, alpha)),
        "who_minimum_met": who_minimum_met(op["sensitivity"], op["specificity"]),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "classification_report": classification_report_table(y, (p >= threshold).astype(np.int64)),
    }


def evaluate(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    threshold: float,
    sources: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    *,
    alpha: float = 0.05,
    n_bins: int = 10,
) -> dict:
    """Every figure the registry, quality gate and model card need, as plain JSON-safe values.

    Operating-point keys sit at the top level (``metrics["sensitivity"]``) so the quality gate and
    ``dvc metrics`` read them without digging. AUC CIs are stratified percentile bootstraps; the
    proportions (sensitivity, specificity, PPV, NPV) use Wilson intervals, which are exact enough and
    free. ``per_source`` repeats everything per data source with undefined metrics as None, because a
    pooled AUC can hide a source the model fails on.
    """
    y, p = _as_arrays(y_true, y_prob)
    result = _summary(y, p, float(threshold), n_boot, seed, alpha, n_bins)
    result["ci"] = {
        "alpha": alpha,
        "auc_method": "stratified percentile bootstrap",
        "n_boot": int(n_boot),
        "seed": int(seed),
        "proportion_method": "Wilson score",
    }
    if sources is not None:
        src = np.asarray([str(s) for s in sources])
        if src.size != y.size:
            raise ValueError(f"sources has {src.size} entries but there are {y.size} samples")
        result["per_source"] = {
            name: _summary(y[src == name], p[src == name], float(threshold), n_boot, seed, alpha, n_bins)
            for name in sorted(set(src.tolist()))
        }
    return _jsonable(result)


def curves(y_true: ArrayLike, y_prob: ArrayLike, threshold: float, n_bins: int = 10) -> dict[str, list[dict]]:
    """Rows for DVC plot files and the dashboard; ROC/PR are empty when a class is missing.

    ``confusion`` has one row per sample because DVC's confusion template counts rows itself.
    """
    y, p = _as_arrays(y_true, y_prob)
    both = 0 < int(y.sum()) < y.size
    roc_rows: list[dict] = []
    pr_rows: list[dict] = []
    if both:
        fpr, tpr, thr = roc_curve(y, p)
        roc_rows = [
            {"fpr": f, "tpr": t, "threshold": _finite_threshold(th, p)}
            for f, t, th in zip(fpr.tolist(), tpr.tolist(), thr.tolist(), strict=True)
        ]
        precision, recall, _ = precision_recall_curve(y, p)
        pr_rows = [
            {"recall": r, "precision": q} for r, q in zip(recall.tolist(), precision.tolist(), strict=True)
        ]
    frac_pos, mean_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    counts = np.bincount(_bin_ids(p, n_bins), minlength=n_bins)
    counts = counts[counts > 0]
    calibration_rows = [
        {"mean_predicted": m, "fraction_positive": f, "count": c}
        for m, f, c in zip(mean_pred.tolist(), frac_pos.tolist(), counts.tolist(), strict=True)
    ]
    pred = (p >= threshold).astype(np.int64)
    confusion_rows = [
        {"actual": CLASS_NAMES[a], "predicted": CLASS_NAMES[b]}
        for a, b in zip(y.tolist(), pred.tolist(), strict=True)
    ]
    return _jsonable(
        {"roc": roc_rows, "pr": pr_rows, "calibration": calibration_rows, "confusion": confusion_rows}
    )
