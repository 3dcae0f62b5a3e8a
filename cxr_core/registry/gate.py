"""The quality gate: the policy that decides which model may reach patients.

Kept apart from the registry's storage so the rules can be read in one place: the floors a candidate
must meet, how it compares with the model in use, and whether a verdict still applies when someone
wants to act on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cxr_core import settings
from cxr_core.settings import WHO_MIN_SENSITIVITY, WHO_MIN_SPECIFICITY

# The WHO minimum (settings.WHO_MIN_*): no params file, form, flag or DAG run can lower it; a deployment
# may only raise it (a stricter gate in its params.yaml).

# The product's robustness targets, as ceilings: a params file may lower them (stricter), never raise
# them. Until 2026-12-05 only a test on the shipped model held them, so a candidate whose decisions
# changed on 2.8 % of films with a strip on one edge was promoted, and rolled back when that test failed.
# One row per check, read from evaluation's re-read of the test films: (the policy's key, its ceiling, the
# metrics section, its share, the films it is a share of, what the share counts). Decisions and maps are
# shares of the films scored after the change, refusals of the films tried.
ROBUSTNESS_CHECKS = (
    ("max_framing_flip_share", 0.05, "framing", "share", "films",
     "decisions change when TB films are cropped wide and normals padded with bars"),
    ("max_framing_refused_share", 0.01, "framing", "refused_share", "tried", "films are refused once reframed"),
    ("max_strip_flip_share", 0.02, "strips_and_markers", "flipped_share", "films",
     "decisions change with a strip and a text marker on one edge"),
    ("max_strip_peak_share", 0.02, "strips_and_markers", "peak_on_strip_share", "maps_with_peak",
     "evidence maps peak on the added strip"),
    ("max_strip_refused_share", 0.02, "strips_and_markers", "refused_share", "tried",
     "films are refused once a strip is added"),
    ("max_held_out_marker_flip_share", 0.02, "held_out_markers", "flipped_share", "films",
     "decisions change with a strip and a marker in a word and font training never drew"),
)  # fmt: skip
ROBUSTNESS_CEILINGS = {key: ceiling for key, ceiling, *_ in ROBUSTNESS_CHECKS}
# The re-read must reach nearly every test film: a share measured on the films that happened to be still
# readable is not the candidate's.
MIN_REREAD_SHARE = 0.98
# A lung model crops every film the classifier sees: on each held-out source its mean Dice must reach this.
LUNG_MIN_DICE = 0.90
# ... and it decides which films are screened at all. The model in use refuses none of the 2,332 shared
# X-rays; an earlier plausibility rule refused 17 (0.7 %), every one a TB film with a destroyed lung, and
# was replaced for it. A candidate may refuse at most this share of a real dataset's films
# (lung_census), and must refuse every non-chest probe (modelling.lung_probes).
LUNG_MAX_REFUSED_SHARE = 0.002
LUNG_MIN_CENSUS_FILMS = 500  # fewer, and one refusal could not even be told from none
# The pictures of cxr_core.modelling.lung_probes (named here: the registry does not import modelling;
# a test holds the two lists equal). A census that tried fewer is not enough.
LUNG_PROBES = ("gradient", "noise", "text page", "photo", "checkerboard", "rings", "vignette", "stripes",
               "sparse dots")  # fmt: skip


@dataclass
class GateResult:
    """Whether a candidate may be promoted; ``reasons`` says why not, ``checks`` lists everything tested."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    floors: dict = field(default_factory=dict)  # the floors this verdict applied


def server_policy(policy: dict | None = None) -> dict:
    """The one gate policy every path applies: the server's params file (``CXR_PARAMS_FILE``, else the
    project's params.yaml), never below the WHO minimum whatever that file says.

    ``policy`` replaces the file (tests, a caller that already read it); it is held to the WHO floors too.
    """
    if policy is None:
        policy = settings.load_params()["gate"]
    floors = settings.section("gate", {k: v for k, v in policy.items() if v is not None})
    unusable = sorted(k for k, v in floors.items() if isinstance(v, float) and not math.isfinite(v))
    if unusable:  # max(nan, 0.9) is nan, and nothing compares below nan: it would switch a floor off
        raise ValueError(f"the gate policy has values that are not numbers: {', '.join(unusable)}")
    floors["min_sensitivity"] = max(float(floors["min_sensitivity"]), WHO_MIN_SENSITIVITY)
    floors["min_specificity"] = max(float(floors["min_specificity"]), WHO_MIN_SPECIFICITY)
    for key, ceiling in ROBUSTNESS_CEILINGS.items():
        floors[key] = min(float(floors[key]), ceiling)
    return floors


def lung_policy() -> dict:
    """The lung model's gate: fixed in code, so no file or flag can lower it."""
    return {"kind": "lungs", "min_dice_per_source": LUNG_MIN_DICE, "max_real_films_refused": LUNG_MAX_REFUSED_SHARE,
            "min_census_films": LUNG_MIN_CENSUS_FILMS, "non_chest_probes": list(LUNG_PROBES)}  # fmt: skip


def lung_gate(metadata: dict) -> GateResult:
    """A lung model may serve only if every held-out source's mean Dice reaches :data:`LUNG_MIN_DICE`,
    it refuses every non-chest probe, and it refuses at most :data:`LUNG_MAX_REFUSED_SHARE` of a real
    dataset's films (``metadata["census"]``, see :func:`cxr_core.pipeline.lung_census.lung_census`)."""
    held_out = metadata.get("held_out") if isinstance(metadata.get("held_out"), dict) else {}
    reasons, checks = [], []
    if not held_out:
        reasons.append("the lung model was not measured on held-out films")
    for source, figures in sorted(held_out.items()):
        dice = _number((figures or {}).get("dice_mean"))
        if dice is None or dice + 1e-12 < LUNG_MIN_DICE:
            shown = "not measured" if dice is None else f"{dice:.3f}"
            reasons.append(f"held-out Dice on {source} is {shown}, below the floor {LUNG_MIN_DICE:.2f}")
        else:
            checks.append(f"held-out Dice on {source} {dice:.3f} meets the floor {LUNG_MIN_DICE:.2f}")
    census = metadata.get("census") if isinstance(metadata.get("census"), dict) else {}
    probes = census.get("probes") if isinstance(census.get("probes"), dict) else {}
    accepted = sorted(name for name, verdict in probes.items() if verdict != "refused")
    untried = [name for name in LUNG_PROBES if name not in probes]
    if not probes:
        reasons.append("the lung model was not tried on pictures with no lungs in them")
    elif untried:
        reasons.append(f"the lung model was not tried on every picture with no lungs: {', '.join(untried)}")
    if probes and accepted:
        reasons.append(f"the lung model finds lungs in pictures with none: {', '.join(accepted)}")
    elif probes and not untried:
        checks.append(f"all {len(probes)} pictures with no lungs in them are refused")
    films = census.get("films") if isinstance(census.get("films"), dict) else {}
    checked, refused = _number(films.get("checked")), _number(films.get("refused"))
    distilled = metadata.get("distilled") if isinstance(metadata.get("distilled"), dict) else {}
    if distilled and films.get("data_name") == distilled.get("data_name") and \
            (_number(films.get("seen_in_training")) or 0) < (_number(distilled.get("films")) or 0):
        reasons.append(f"the census on {films.get('data_name')} counted films the lung model was distilled on: "
                       "it must judge films the model never trained on")  # fmt: skip
    if not checked or refused is None:
        reasons.append("the lung model was not tried on a dataset of real X-rays")
    elif checked < LUNG_MIN_CENSUS_FILMS:
        reasons.append(f"the lung model was tried on {checked:.0f} real X-rays only ({films.get('data_name')}; "
                       f"{films.get('seen_in_training') or 0} it trained on left out), fewer than the "
                       f"{LUNG_MIN_CENSUS_FILMS} needed: lungs-train --census <a larger labelled dataset>, or distil "
                       "on fewer of its films")  # fmt: skip
    elif refused / checked > LUNG_MAX_REFUSED_SHARE + 1e-12:
        by_source = ", ".join(f"{source} {count}" for source, count in (films.get("refused_by_source") or {}).items())
        reasons.append(f"the lung model refuses {refused:.0f} of {checked:.0f} real X-rays as not a chest "
                       f"({by_source}), above the {LUNG_MAX_REFUSED_SHARE:.1%} allowed")  # fmt: skip
    else:
        checks.append(f"{refused:.0f} of {checked:.0f} real X-rays refused ({films.get('data_name')})")
    return GateResult(passed=not reasons, reasons=reasons, checks=checks, floors=lung_policy())


def effective_floors(policy: dict | None, requested: dict | None = None) -> tuple[dict, list[str]]:
    """The server's gate policy, made stricter (never looser) by what a form or a DAG run asked for.

    Returns the floors to apply and a note for every requested value that would have lowered one: an
    admin who sets the minimum sensitivity to 0 gets the policy's floor, and is told so. The policy
    itself is held to the WHO minimum (:func:`server_policy`).
    """
    floors = server_policy(policy or {})
    notes = []
    for key, value in (requested or {}).items():
        if key not in floors or value is None:
            continue
        wanted = type(floors[key])(value)
        chosen = min(floors[key], wanted) if key.startswith("max_") else max(floors[key], wanted)
        if chosen != wanted:
            notes.append(f"{key} {value} is looser than the policy's {floors[key]}; the policy applies")
        floors[key] = chosen
    return floors, notes


def policy_stamp(floors: dict) -> str:
    """A short fingerprint of the floors, so a verdict taken under other floors is known to be stale."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(floors, sort_keys=True).encode()).hexdigest()[:12]


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
    params = server_policy(gate_params or {})
    min_sens = float(params["min_sensitivity"])
    min_spec = float(params["min_specificity"])
    max_drop = float(params["max_auc_drop"])
    reasons: list[str] = []
    checks: list[str] = []

    films = _number((candidate_metrics or {}).get("test_images"))
    per_class = (candidate_metrics or {}).get("test_per_class") or {}
    smallest = min((int(n) for n in per_class.values()), default=0) if len(per_class) == 2 else 0
    if films is None or films < params["min_test_films"] or smallest < params["min_test_per_class"]:
        reasons.append(
            f"too few test films to judge (n={int(films or 0)}, smallest class {smallest}; the policy needs "
            f"{params['min_test_films']} films and {params['min_test_per_class']} of each class)"
        )
    else:
        checks.append(f"{int(films)} test films, at least {smallest} of each class")

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
    robustness_reasons, robustness_checks = robustness_verdict(candidate_metrics, params)
    reasons += robustness_reasons
    checks += robustness_checks
    return GateResult(passed=not reasons, reasons=reasons, checks=checks, floors=params)


def robustness_verdict(candidate_metrics: dict | None, floors: dict) -> tuple[list[str], list[str]]:
    """The framing and strip targets on the candidate's own test films (evaluation re-reads them).

    A section re-read on fewer than :data:`MIN_REREAD_SHARE` of the test films (the originals moved since
    ingest, say), or a figure measured on fewer films than the policy's ``min_test_films``, counts as not
    measured: a share of what happened to remain is not the candidate's, and an unmeasured model fails.
    """
    reasons, checks = [], []
    test_films = _number((candidate_metrics or {}).get("test_images"))
    short = set()
    for section_name, what in (("framing", "reframed"), ("strips_and_markers", "given a strip and a marker"),
                               ("held_out_markers", "given a strip and a marker training never drew")):
        section = (candidate_metrics or {}).get(section_name)
        tried = _number(section.get("tried")) if isinstance(section, dict) else None
        if test_films and tried is not None and tried < MIN_REREAD_SHARE * test_films:
            short.add(section_name)
            reasons.append(f"only {int(tried)} of {int(test_films)} test films could be read again and {what}: "
                           "the rest were not measured (moved or changed since ingest)")  # fmt: skip
    for key, _, section_name, figure, count, meaning in ROBUSTNESS_CHECKS:
        section = (candidate_metrics or {}).get(section_name)
        section = section if isinstance(section, dict) else {}
        if section_name in short:
            continue
        count = count if count in section else "films"  # older summaries: every scored film had a map
        films, share, limit = _number(section.get(count)), _number(section.get(figure)), float(floors[key])
        if share is None or not films:
            reasons.append(f"how often {meaning} was not measured")
        elif films < floors["min_test_films"]:
            reasons.append(f"how often {meaning} was measured on {int(films)} test films, fewer than the "
                           f"{floors['min_test_films']} the policy needs")  # fmt: skip
        elif share > limit + 1e-12:
            reasons.append(f"{_fmt(share * 100, limit * 100)} % of {int(films)} {meaning} "
                           f"(at most {limit:.0%} allowed)")  # fmt: skip
        else:
            checks.append(f"{share:.1%} of {int(films)} {meaning} (at most {limit:.0%})")
    return reasons, checks


@dataclass
class Promotability:
    """Whether a gate verdict may be acted on now, and what to tell the administrator."""

    allowed: bool
    state: str  # "in_use" | "failed" | "stale" | "promotable"
    message: str


def promotability(
    version: str,
    passed: bool,
    compared_with: str | None,
    current: str | None,
    *,
    verdict_stamp: str | None = None,
    current_stamp: str | None = None,
    verdict_policy: str | None = None,
    current_policy: str | None = None,
) -> Promotability:
    """A verdict applies only to the comparison it made, under the floors it used.

    A gate that compared the candidate with model A says nothing once the model in use has changed
    since (a rollback, another promotion: the registry's pointer stamp moved) or once the server's
    floors changed (a restart with a new policy); it is re-taken by retraining instead of acted on.
    """
    if current == version:
        return Promotability(False, "in_use", f"{version} is the model in use.")
    if not passed:
        return Promotability(False, "failed", "Quality gate failed, so it cannot be promoted.")
    if verdict_policy != current_policy:
        return Promotability(
            False, "stale", "The gate's floors have changed since this verdict: retrain to judge it again."
        )
    if compared_with != current or verdict_stamp != current_stamp:
        return Promotability(
            False,
            "stale",
            f"The gate compared {version} with {compared_with or 'no model'}, but the model in use has "
            f"changed since ({current or 'no model'} now): retrain to judge it against the current model.",
        )
    return Promotability(True, "promotable", f"{version} passed the gate against the model in use.")
