"""Site profiles: a clinic measures the model on its own confirmed films and sets its own operating point.

A threshold chosen on development data is not a new clinic's threshold: scanners, exposure and case mix
differ, and so do prevalence and the budget for confirmatory tests (WHO's operational handbook on TB
screening asks programmes to choose the CAD threshold for their setting). A profile records, for one
model version, the threshold a site chose on its local set, optionally a probability calibration
fitted there, and the evidence: how many films, the local ROC-AUC with its CI, and the sensitivity and
specificity that threshold reaches *on films not used to choose it* (stratified cross-validation: the
threshold is chosen on k-1 folds and counted on the k-th), never the optimistic figures of the films
that chose it.

Profiles live in ``<registry>/sites/<name>.json``; ``<registry>/sites/active.json`` names the one in
use (atomically replaced, like the model pointer), so ``active`` and the other pointer words are reserved
and never a profile's name. Creating, activating, refusing, overriding and switching off write audit lines.

A profile is switched on only when its cross-validated sensitivity (the point estimate over films that did
not choose the threshold) reaches its floor: the profile's own floor, never below the WHO minimum of 90%
(a referral budget has no floor of its own, so it gets the WHO one). Below it, only an admin's explicit
override with a written reason switches it on, and the audit line keeps the reason and both figures.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cxr_core.errors import CxrError
from cxr_core.fsutil import read_json_or_empty, write_json_atomic
from cxr_core.registry import audit
from cxr_core.settings import WHO_MIN_SENSITIVITY

SITES_DIR = "sites"
ACTIVE_FILE = "active.json"
WEAK_PER_CLASS = 50  # below this many films of a class, the page says the estimate is weak
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_NAMES = frozenset({"active", "none", "default", "previous", "current"})  # pointer words


class SiteFloorError(CxrError):
    """Activation refused: the profile's cross-validated sensitivity is below its floor."""


def check_name(name: str) -> str:
    """A profile name that is a safe file name and not one of the pointer files' words."""
    if not _NAME.match(name or ""):
        raise CxrError("A site name uses letters, digits, '.', '_' or '-' (at most 64 characters).")
    if name.lower() in RESERVED_NAMES:
        raise CxrError(
            f"{name!r} is a reserved word ({', '.join(sorted(RESERVED_NAMES))}); choose another site name."
        )
    return name


def film_fingerprint(model_input: np.ndarray) -> str:
    """A film's identity without its identity: sha256 of the network's input pixels (no name, no header).

    The same picture under any file name or container gives the same fingerprint, which is how a
    screened film is recognised as one of the films a site profile was fitted on.
    """
    pixels = np.ascontiguousarray(np.asarray(model_input, dtype=np.uint8))
    return hashlib.sha256(pixels.tobytes()).hexdigest()


def sensitivity_floor(profile: dict) -> float:
    """The floor a profile must reach to be switched on: its own, never below the WHO minimum."""
    own = profile.get("min_sensitivity")
    return max(float(own) if own is not None else 0.0, WHO_MIN_SENSITIVITY)


def floor_check(profile: dict) -> dict:
    """Whether the profile reaches its floor, on which figure (stated), with the CI beside it."""
    cv = (profile.get("evidence") or {}).get("cross_validated") or {}
    measured = cv.get("sensitivity")
    floor = sensitivity_floor(profile)
    ok = measured is not None and measured >= floor
    return {
        "floor": floor,
        "measured": measured,
        "ci": cv.get("sensitivity_ci"),
        "basis": "cross-validated sensitivity (point estimate)",
        "ok": ok,
        "message": None
        if ok
        else (
            f"The profile {profile.get('name')!r} reaches a cross-validated sensitivity (point estimate) of "
            + ("n/a" if measured is None else f"{measured:.1%}")
            + f", below its floor of {floor:.0%}: switching it on would miss more TB than the floor allows."
        ),
    }


@dataclass
class OperatingRule:
    """How a site chooses its threshold: a sensitivity floor, or a referral budget at its prevalence."""

    min_sensitivity: float | None = 0.90
    referrals_per_100: float | None = None  # films sent for confirmation per 100 screened

    def choose(self, labels: np.ndarray, scores: np.ndarray) -> float:
        # metrics here, not at the top: scipy, scikit-learn and pandas cost a second of every serving
        # process's start, and serving needs none of them (as in the two functions below)
        from cxr_core import metrics

        if self.referrals_per_100 is not None:
            # The score above which that share of films lies: referrals depend on the scores alone.
            share = min(max(float(self.referrals_per_100) / 100.0, 0.0), 1.0)
            return float(np.quantile(scores, 1.0 - share)) if share > 0 else float(np.max(scores) + 1e-9)
        return float(
            metrics.select_threshold(
                labels, scores, rule="sensitivity_floor", min_sensitivity=float(self.min_sensitivity or 0.9)
            ).threshold
        )

    def describe(self) -> str:
        if self.referrals_per_100 is not None:
            return f"{self.referrals_per_100:g} referrals per 100 films screened"
        return f"highest specificity with sensitivity >= {self.min_sensitivity:g}"


def cross_validated_operating_point(
    labels: np.ndarray, scores: np.ndarray, rule: OperatingRule, folds: int = 5, seed: int = 0
) -> dict:
    """Sensitivity and specificity of the rule's threshold, counted only on films that did not choose it."""
    from sklearn.model_selection import StratifiedKFold

    from cxr_core import metrics

    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    smallest = int(min(labels.sum(), len(labels) - labels.sum()))
    folds = max(2, min(folds, smallest))
    tp = fp = tn = fn = 0
    thresholds = []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for choose_idx, count_idx in splitter.split(scores, labels):
        threshold = rule.choose(labels[choose_idx], scores[choose_idx])
        thresholds.append(threshold)
        called = scores[count_idx] >= threshold
        truth = labels[count_idx] == 1
        tp += int(np.sum(called & truth))
        fn += int(np.sum(~called & truth))
        fp += int(np.sum(called & ~truth))
        tn += int(np.sum(~called & ~truth))
    sensitivity = tp / (tp + fn) if tp + fn else None
    specificity = tn / (tn + fp) if tn + fp else None
    return {
        "folds": folds,
        "sensitivity": sensitivity,
        "sensitivity_ci": list(metrics.wilson_interval(tp, tp + fn)),
        "specificity": specificity,
        "specificity_ci": list(metrics.wilson_interval(tn, tn + fp)),
        "referrals_per_100": round(100.0 * (tp + fp) / len(labels), 1),
        "fold_thresholds": [round(t, 6) for t in thresholds],
    }


def fit_calibration(labels: np.ndarray, scores: np.ndarray, method: str) -> dict:
    """Platt (logistic on the logit) or isotonic calibration fitted on the local set, as plain JSON."""
    labels, scores = np.asarray(labels), np.clip(np.asarray(scores, dtype=np.float64), 1e-6, 1 - 1e-6)
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        logit = np.log(scores / (1 - scores))[:, None]
        model = LogisticRegression().fit(logit, labels)
        return {"method": "platt", "a": float(model.coef_[0, 0]), "b": float(model.intercept_[0])}
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        model = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(scores, labels)
        return {"method": "isotonic", "x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}
    raise CxrError(f"unknown calibration {method!r}; choose platt or isotonic")


def apply_calibration(calibration: dict | None, probability: float) -> float:
    if not calibration:
        return probability
    p = min(max(float(probability), 1e-6), 1 - 1e-6)
    if calibration["method"] == "platt":
        z = calibration["a"] * np.log(p / (1 - p)) + calibration["b"]
        return float(1.0 / (1.0 + np.exp(-z)))
    return float(np.interp(p, calibration["x"], calibration["y"]))


def build_profile(
    name: str,
    model_version: str,
    labels: np.ndarray,
    scores: np.ndarray,
    rule: OperatingRule,
    *,
    calibration: str | None = None,
    card_auc: float | None = None,
    created_by: str | None = None,
    n_boot: int = 1000,
    fitted_on: list[str] | None = None,
) -> dict:
    """The profile for ``name``: threshold chosen on every local film, evidence from cross-validation.

    ``fitted_on`` are the :func:`film_fingerprint` of the films that chose the threshold, so a screened
    film that was one of them is marked: its result is not an independent test of the profile.
    """
    from cxr_core import metrics

    check_name(name)
    labels, scores = np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=np.float64)
    n_tb, n_normal = int(labels.sum()), int(len(labels) - labels.sum())
    if n_tb < 2 or n_normal < 2:
        raise CxrError(
            f"The local set needs confirmed films of both classes (it has {n_tb} TB and {n_normal} normal)."
        )
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(labels, scores))
    low, high = metrics.bootstrap_ci(labels, scores, "roc_auc", n_boot=n_boot, seed=0)
    threshold = rule.choose(labels, scores)
    weak = [
        f"only {count} {label} films (at least {WEAK_PER_CLASS} give a usable estimate)"
        for label, count in (("TB", n_tb), ("normal", n_normal))
        if count < WEAK_PER_CLASS
    ]
    profile = {
        "name": name,
        "model_version": model_version,
        "threshold": float(threshold),  # exact: a rounded threshold would flip the film it came from
        "rule": rule.describe(),
        "min_sensitivity": rule.min_sensitivity if rule.referrals_per_100 is None else None,
        "referrals_per_100": rule.referrals_per_100,
        "calibration": fit_calibration(labels, scores, calibration) if calibration else None,
        "evidence": {
            "films": len(labels),
            "tb": n_tb,
            "normal": n_normal,
            "roc_auc": round(auc, 4),
            "roc_auc_ci": [low, high],
            "cross_validated": cross_validated_operating_point(labels, scores, rule),
            "weak": weak,
            "below_card": bool(card_auc is not None and high is not None and high < card_auc),
            "card_roc_auc": card_auc,
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "created_by": created_by or audit.default_actor(),
        "fitted_on": sorted(set(fitted_on or [])),
    }
    return profile


class SiteProfiles:
    """The site profiles of one registry, and which one is active."""

    def __init__(self, registry_root: str | Path):
        self.root = Path(registry_root)
        self.folder = self.root / SITES_DIR

    def path(self, name: str) -> Path:
        try:
            check_name(name)
        except CxrError as error:
            raise CxrError(f"There is no site profile named {name!r}.") from error
        return self.folder / f"{name}.json"

    def save(self, profile: dict, actor: str | None = None) -> Path:
        check_name(profile["name"])
        path = self.path(profile["name"])
        replaced = path.exists()
        write_json_atomic(path, profile)
        audit.record("site_profile", root=self.root, version=profile["model_version"], actor=actor,
                     site=profile["name"], threshold=profile["threshold"],
                     outcome="replaced" if replaced else "created")  # fmt: skip
        return path

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.json") if p.stem.lower() not in RESERVED_NAMES)

    def load(self, name: str) -> dict:
        profile = read_json_or_empty(self.path(name))
        if not profile:
            raise CxrError(f"There is no site profile named {name!r}.")
        return profile

    def pointer(self) -> dict:
        """What ``active.json`` holds: name, since (UTC), by, previous, and an override reason when one was given."""
        return read_json_or_empty(self.folder / ACTIVE_FILE)

    def active_name(self) -> str | None:
        return self.pointer().get("name")

    def active(self) -> dict | None:
        """The profile in use with ``in_use`` (since, by, override) from the pointer; None without one."""
        pointer = self.pointer()
        name = pointer.get("name")
        if not name:
            return None
        profile = self.load(name)
        profile["in_use"] = {key: pointer.get(key) for key in ("since", "by", "override")}
        return profile

    def activate(self, name: str | None, actor: str | None = None, override_reason: str | None = None) -> dict:
        """Make ``name`` the profile in use (None: switch profiles off, back to the model's own threshold).

        Refused (and audited as refused) when the profile is below its sensitivity floor, unless
        ``override_reason`` says why an admin switches it on anyway; that reason is audited too.
        """
        previous = self.active_name()
        now = datetime.now(UTC).isoformat(timespec="seconds")
        if name is None:
            write_json_atomic(self.folder / ACTIVE_FILE, {"name": None, "previous": previous, "since": now,
                                                          "by": actor})  # fmt: skip
            audit.record("site_activate", root=self.root, actor=actor, site=None, previous=previous,
                         outcome="switched_off")  # fmt: skip
            return {"name": None}
        profile = self.load(name)  # refuses an unknown name before anything changes
        check = floor_check(profile)
        reason = (override_reason or "").strip()
        if not check["ok"] and not reason:
            audit.record("site_activate", root=self.root, actor=actor, site=name, previous=previous,
                         version=profile.get("model_version"), outcome="refused", floor=check["floor"],
                         cross_validated_sensitivity=check["measured"])  # fmt: skip
            raise SiteFloorError(
                f"{check['message']} Switch it on only with an explicit, audited override and a reason."
            )
        write_json_atomic(self.folder / ACTIVE_FILE, {"name": name, "previous": previous, "since": now, "by": actor,
                                                      "override": reason or None})  # fmt: skip
        audit.record("site_activate", root=self.root, actor=actor, site=name, previous=previous,
                     version=profile.get("model_version"), outcome="override" if not check["ok"] else "ok",
                     floor=check["floor"], cross_validated_sensitivity=check["measured"],
                     **({"reason": reason} if not check["ok"] else {}))  # fmt: skip
        return check
