"""The Local validation page's view-model: a clinic's confirmed films scored, the figures beside the card,
and the site profiles as a table."""

from __future__ import annotations

from pathlib import Path

from cxr_core import metrics
from cxr_core.errors import CxrError
from cxr_core.pipeline.local_validation import local_report, score_local_set
from cxr_core.registry.sites import OperatingRule, SiteProfiles, build_profile, floor_check, sensitivity_floor


def validate(predictor, data_path: str | Path, n_boot: int = 1000) -> dict:
    """Score the local set with the model in use at its own threshold, and compare with its card."""
    scored = score_local_set(data_path, predictor)
    card = predictor.metadata.get("metrics") or {}
    report = local_report(scored["labels"], scored["scores"], predictor.model_threshold, card, n_boot=n_boot)
    return {**scored, "report": report, "card": card}


def propose_profile(name: str, predictor, validation: dict, rule: OperatingRule, calibration: str | None,
                    actor: str) -> dict:  # fmt: skip
    return build_profile(
        name, predictor.version, validation["labels"], validation["scores"], rule,
        calibration=calibration, card_auc=validation["card"].get("roc_auc"), created_by=actor,
        fitted_on=validation.get("fingerprints"),
    )  # fmt: skip


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def evidence_lines(profile: dict) -> list[str]:
    """The profile's evidence as a person reads it; weak evidence is said first."""
    evidence = profile["evidence"]
    cv = evidence["cross_validated"]
    low, high = evidence["roc_auc_ci"]
    lines = [f"**Weak evidence:** {'; '.join(evidence['weak'])}." ] if evidence["weak"] else []  # fmt: skip
    lines += [
        f"{evidence['films']} confirmed films ({evidence['tb']} TB, {evidence['normal']} normal); ROC-AUC "
        f"{evidence['roc_auc']:.3f} (95% CI {low:.3f}–{high:.3f}).",
        f"At threshold {profile['threshold']:.4f} ({profile['rule']}): sensitivity {_pct(cv['sensitivity'])} "
        f"(CI {_pct(cv['sensitivity_ci'][0])}–{_pct(cv['sensitivity_ci'][1])}), specificity "
        f"{_pct(cv['specificity'])} (CI {_pct(cv['specificity_ci'][0])}–{_pct(cv['specificity_ci'][1])}), "
        f"{cv['referrals_per_100']:g} referrals per 100 films, each counted on films that did not choose the "
        f"threshold ({cv['folds']}-fold cross-validation).",
    ]
    if evidence.get("below_card"):
        lines.append(
            f"The local ROC-AUC lies below the model card's {evidence['card_roc_auc']:.3f} even at the top of its "
            "confidence interval: the model does worse here than where it was developed."
        )
    return lines


def profile_rows(sites: SiteProfiles) -> list[dict]:
    active = sites.active_name()
    rows = []
    for name in sites.names():
        try:
            profile = sites.load(name)
            evidence = profile["evidence"]
            check = floor_check(profile)
        except (CxrError, KeyError, TypeError):
            continue  # a damaged file is not a profile; it cannot be switched on either
        rows.append({
            "site": name, "in use": "yes" if name == active else "", "model": profile["model_version"],
            "threshold": profile["threshold"], "rule": profile["rule"], "films": evidence["films"],
            "ROC AUC": evidence["roc_auc"],
            "sensitivity (cv)": evidence["cross_validated"]["sensitivity"],
            "floor": check["floor"],
            "reaches floor": "yes" if check["ok"] else "NO",
            "specificity (cv)": evidence["cross_validated"]["specificity"],
            "referrals per 100 (cv)": evidence["cross_validated"].get("referrals_per_100"),
            "weak": "yes" if evidence["weak"] else "", "created": profile["created"][:19].replace("T", " "),
            "by": profile.get("created_by", ""),
        })  # fmt: skip
    return rows


def rule_from_form(how: str, floor: float | None, referrals: float | None) -> OperatingRule:
    """The operating rule the form asks for, or a clear message; a value out of range is refused, never clamped."""
    if how.startswith("Sensitivity"):
        if floor is None:
            raise CxrError("Enter a sensitivity floor between 0.90 and 1.00.")
        if not metrics.WHO_MIN_SENSITIVITY <= float(floor) <= 1.0:
            raise CxrError(
                f"A sensitivity floor of {floor:g} is refused: it must lie between "
                f"{metrics.WHO_MIN_SENSITIVITY:.2f} (the WHO minimum for a TB screening test) and 1.00."
            )
        return OperatingRule(min_sensitivity=float(floor))
    if referrals is None or not 1.0 <= float(referrals) <= 100.0:
        raise CxrError(f"Referrals per 100 films must lie between 1 and 100 (got {referrals}).")
    return OperatingRule(min_sensitivity=None, referrals_per_100=float(referrals))


def activation_summary(profile: dict) -> dict:
    """What the confirmation step shows before a profile is switched on: its evidence and the floor check."""
    check = floor_check(profile)
    return {**check, "lines": evidence_lines(profile), "floor_text": f"{sensitivity_floor(profile):.0%}"}
