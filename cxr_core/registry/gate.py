"""The quality gate: the policy that decides which model may reach patients.

Kept apart from the registry's storage so the rules can be read in one place: the floors a candidate
must meet, how it compares with the model in use, and whether a verdict still applies when someone
wants to act on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cxr_core import settings


@dataclass
class GateResult:
    """Whether a candidate may be promoted; ``reasons`` says why not, ``checks`` lists everything tested."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)


def _number(value: object) -> float | None:
    """A metric as a float; evaluation may store ``{"value": x, "ci": [...]}`` instead of a bare number."""
    if isinstance(value, dict):
        for key in ("value", "point", "estimate", "mean"):
            if key in value:
                return _number(value[key])
        return None
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _metric(metrics: dict | None, name: str) -> float | None:
    if not isinstance(metrics, dict):
        return None
    if name == "roc_auc":
        return _number(metrics.get("roc_auc", metrics.get("auc")))
    operating = metrics.get("operating_point")
    if isinstance(operating, dict) and name in operating:
        return _number(operating[name])
    return _number(metrics.get(name))


def _fmt(value: float, other: float) -> str:
    """Two decimals, or more when two decimals would make a failing value look equal to its limit."""
    for digits in range(2, 7):
        if f"{value:.{digits}f}" != f"{other:.{digits}f}":
            return f"{value:.{digits}f}"
    return f"{value:.6f}"


def quality_gate(
    candidate_metrics: dict, current_metrics: dict | None, gate_params: dict | None = None
) -> GateResult:
    """Decide whether a retrained model is good enough to replace the one in use.

    Absolute floors on sensitivity and specificity at the chosen threshold always apply (a screening
    tool that misses TB is worse than none); when a current model exists the candidate may also not
    lose more than ``max_auc_drop`` ROC AUC against it. Missing candidate metrics fail the gate,
    because an unmeasured model must not reach patients.
    """
    params = settings.section("gate", {k: v for k, v in (gate_params or {}).items() if v is not None})
    min_sens = float(params["min_sensitivity"])
    min_spec = float(params["min_specificity"])
    max_drop = float(params["max_auc_drop"])
    reasons: list[str] = []
    checks: list[str] = []

    for name, floor in (("sensitivity", min_sens), ("specificity", min_spec)):
        value = _metric(candidate_metrics, name)
        if value is None:
            reasons.append(f"{name} of the new model was not measured")
            continue
        if value + 1e-12 < floor:
            reasons.append(f"{name} {_fmt(value, floor)} is below the floor {floor:.2f}")
        else:
            checks.append(f"{name} {value:.2f} meets the floor {floor:.2f}")

    candidate_auc = _metric(candidate_metrics, "roc_auc")
    current_auc = _metric(current_metrics, "roc_auc")
    if current_auc is None:
        checks.append("no current model to compare ROC AUC against; only the floors apply")
    elif candidate_auc is None:
        reasons.append("ROC AUC of the new model was not measured, so it cannot be compared")
    else:
        limit = current_auc - max_drop
        if candidate_auc + 1e-12 < limit:
            reasons.append(
                f"ROC AUC {_fmt(candidate_auc, limit)} is more than {max_drop:.2f} below "
                f"the current model's {current_auc:.2f}"
            )
        else:
            checks.append(
                f"ROC AUC {candidate_auc:.2f} is within {max_drop:.2f} "
                f"of the current model's {current_auc:.2f}"
            )
    return GateResult(passed=not reasons, reasons=reasons, checks=checks)


@dataclass
class Promotability:
    """Whether a gate verdict may be acted on now, and what to tell the administrator."""

    allowed: bool
    state: str  # "in_use" | "failed" | "stale" | "promotable"
    message: str


def promotability(
    version: str, passed: bool, compared_with: str | None, current: str | None
) -> Promotability:
    """A verdict applies only to the comparison it made: promote only against the model still in use.

    A gate that compared the candidate with model A says nothing once model B serves (after a rollback
    or another promotion), so it is re-taken by retraining instead of being acted on.
    """
    if current == version:
        return Promotability(False, "in_use", f"{version} is the model in use.")
    if not passed:
        return Promotability(False, "failed", "Quality gate failed, so it cannot be promoted.")
    if compared_with != current:
        return Promotability(
            False,
            "stale",
            f"The gate compared {version} with {compared_with or 'no model'}, but {current or 'no model'} "
            "is in use now: retrain to judge it against the current model.",
        )
    return Promotability(True, "promotable", f"{version} passed the gate against the model in use.")
