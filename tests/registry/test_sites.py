"""Site profiles: a clinic's own threshold, with honest (cross-validated) evidence, audited."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import clinic_folder
from conftest import shared_records

from cxr_core.errors import CxrError
from cxr_core.registry import audit
from cxr_core.registry.sites import (
    OperatingRule,
    SiteFloorError,
    SiteProfiles,
    apply_calibration,
    build_profile,
    cross_validated_operating_point,
    floor_check,
    sensitivity_floor,
)

ROOT = Path(__file__).resolve().parents[2]


def _scores(n_per_class=120, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n_per_class, int), np.ones(n_per_class, int)]
    scores = np.r_[rng.beta(2, 5, n_per_class), rng.beta(5, 2, n_per_class)]
    return labels, scores


def test_the_threshold_is_counted_only_on_films_that_did_not_choose_it():
    labels, scores = _scores()
    rule = OperatingRule(min_sensitivity=0.9)
    cv = cross_validated_operating_point(labels, scores, rule, folds=2, seed=0)
    from sklearn.model_selection import StratifiedKFold

    tp = fn = 0
    for choose, count in StratifiedKFold(2, shuffle=True, random_state=0).split(scores, labels):
        threshold = rule.choose(labels[choose], scores[choose])
        positives = count[labels[count] == 1]
        tp += int(np.sum(scores[positives] >= threshold))
        fn += int(np.sum(scores[positives] < threshold))
    assert cv["sensitivity"] == tp / (tp + fn)
    assert cv["sensitivity_ci"][0] <= cv["sensitivity"] <= cv["sensitivity_ci"][1]
    assert cv["sensitivity"] >= 0.85  # the floor, give or take what one half can show about the other


def test_a_referral_budget_sets_the_share_of_films_referred():
    labels, scores = _scores()
    threshold = OperatingRule(min_sensitivity=None, referrals_per_100=30).choose(labels, scores)
    assert np.mean(scores >= threshold) == pytest.approx(0.30, abs=0.01)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_a_calibration_fitted_on_the_site_maps_scores_to_observed_risk(method):
    labels, scores = _scores(400)
    profile = build_profile(
        "clinic-a", "v1", labels, scores, OperatingRule(0.9), calibration=method, n_boot=50
    )
    calibrated = np.array([apply_calibration(profile["calibration"], s) for s in scores])
    assert np.all(np.diff(calibrated[np.argsort(scores)]) >= -1e-9)  # monotone: the ranking is kept
    for low, high in ((0.0, 0.3), (0.7, 1.0)):
        inside = (scores >= low) & (scores < high)
        assert abs(calibrated[inside].mean() - labels[inside].mean()) < 0.08


def test_weak_evidence_is_named_and_bad_sets_refused():
    labels, scores = _scores(20)
    profile = build_profile("small", "v1", labels, scores, OperatingRule(0.9), n_boot=50)
    assert profile["evidence"]["weak"] == [
        "only 20 TB films (at least 50 give a usable estimate)",
        "only 20 normal films (at least 50 give a usable estimate)",
    ]
    with pytest.raises(CxrError, match="both classes"):
        build_profile("one-class", "v1", np.ones(10, int), np.linspace(0, 1, 10), OperatingRule(0.9))
    with pytest.raises(CxrError, match="site name"):
        build_profile("../etc", "v1", labels, scores, OperatingRule(0.9))


def _with_cv_sensitivity(profile: dict, sensitivity: float) -> dict:
    """The profile as measured with another cross-validated sensitivity (the floor check reads only that)."""
    profile["evidence"]["cross_validated"]["sensitivity"] = sensitivity
    return profile


def test_profiles_are_saved_activated_reverted_and_audited(tmp_path):
    labels, scores = _scores()
    sites = SiteProfiles(tmp_path)
    a = _with_cv_sensitivity(build_profile("clinic-a", "v1", labels, scores, OperatingRule(0.9), n_boot=50), 0.93)
    b = _with_cv_sensitivity(build_profile("clinic-b", "v1", labels, scores, OperatingRule(0.95), n_boot=50), 0.96)
    sites.save(a, actor="t")
    sites.save(b, actor="t")
    assert sites.names() == ["clinic-a", "clinic-b"] and sites.active() is None
    sites.activate("clinic-a", actor="admin")
    sites.activate("clinic-b", actor="admin")
    active = sites.active()
    assert active["name"] == "clinic-b" and active["in_use"]["by"] == "admin" and active["in_use"]["since"]
    sites.activate(None, actor="admin")  # revert to the model's own threshold
    assert sites.active() is None
    with pytest.raises(CxrError):
        sites.activate("nowhere")
    actions = [(e["action"], e.get("site"), e["outcome"]) for e in audit.read(tmp_path)]
    assert actions == [("site_activate", None, "switched_off"), ("site_activate", "clinic-b", "ok"),
                       ("site_activate", "clinic-a", "ok"), ("site_profile", "clinic-b", "created"),
                       ("site_profile", "clinic-a", "created")]  # fmt: skip


def test_a_profile_below_its_floor_is_refused_unless_an_audited_override_says_why(tmp_path):
    """The issue's case: a "sensitivity >= 0.90" profile with cross-validated sensitivity 86.7%."""
    labels, scores = _scores()
    sites = SiteProfiles(tmp_path)
    sites.save(_with_cv_sensitivity(build_profile("weak", "v1", labels, scores, OperatingRule(0.9), n_boot=50), 0.867))
    with pytest.raises(SiteFloorError, match=r"86\.7%.*below its floor of 90%"):
        sites.activate("weak", actor="admin")
    assert sites.active() is None
    refused = audit.read(tmp_path)[0]
    assert (refused["action"], refused["outcome"], refused["site"]) == ("site_activate", "refused", "weak")
    assert refused["floor"] == 0.9 and refused["cross_validated_sensitivity"] == 0.867
    with pytest.raises(SiteFloorError):
        sites.activate("weak", actor="admin", override_reason="   ")  # a blank reason is no reason
    sites.activate("weak", actor="dr-admin", override_reason="no other test available this quarter")
    assert sites.active()["in_use"]["override"] == "no other test available this quarter"
    override = audit.read(tmp_path)[0]
    assert override["outcome"] == "override" and override["reason"] == "no other test available this quarter"
    assert override["actor"] == "dr-admin"


def test_a_referral_budget_carries_the_who_floor_and_a_floor_is_never_below_it():
    labels, scores = _scores()
    budget = build_profile("budget", "v1", labels, scores, OperatingRule(None, referrals_per_100=5), n_boot=50)
    assert sensitivity_floor(budget) == 0.9
    assert not floor_check(budget)["ok"]  # 5 referrals per 100 at 50% prevalence cannot reach 90%
    low = build_profile("low", "v1", labels, scores, OperatingRule(0.6), n_boot=50)
    assert sensitivity_floor(low) == 0.9
    high = build_profile("high", "v1", labels, scores, OperatingRule(0.97), n_boot=50)
    assert sensitivity_floor(high) == 0.97


@pytest.mark.parametrize("name", ["active", "Active", "none", "current"])
def test_reserved_names_are_refused(tmp_path, name):
    """A profile named "active" once overwrote the pointer file and went live on "Create"."""
    labels, scores = _scores(20)
    with pytest.raises(CxrError, match="reserved"):
        build_profile(name, "v1", labels, scores, OperatingRule(0.9), n_boot=20)
    profile = build_profile("fine", "v1", labels, scores, OperatingRule(0.9), n_boot=20)
    sites = SiteProfiles(tmp_path)
    with pytest.raises(CxrError, match="reserved"):
        sites.save({**profile, "name": name})
    assert not (tmp_path / "sites" / "active.json").exists() and sites.active() is None


@pytest.mark.slow
def test_calibrate_and_predict_at_the_site_threshold_on_real_films(tmp_path, shared_cxr):
    """DA (an Indian hospital) stands in for a clinic: its own threshold, used by predict --site."""
    rows = shared_records("da")
    local = clinic_folder(tmp_path / "clinic", rows, shared_cxr)
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models)
    env = {**os.environ, "CXR_MODELS_DIR": str(models)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cxr_core", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip

    done = cli(
        "calibrate",
        "--data",
        str(local),
        "--name",
        "india-da",
        "--min-sensitivity",
        "0.90",
        "--n-boot",
        "200",
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    profile = json.loads((models / "sites" / "india-da.json").read_text())
    assert shown["threshold"] == profile["threshold"] != pytest.approx(shown["model_threshold"], abs=1e-4)
    assert shown["films"] == len(rows) and profile["evidence"]["cross_validated"]["folds"] >= 2
    assert shown["active"] is None  # created, not switched on

    scored = cli("predict", str(local), "--site", "india-da")
    assert scored.returncode == 0, scored.stderr
    assert "site profile in use: india-da" in scored.stderr
    results = [json.loads(line) for line in scored.stdout.splitlines()]
    assert {r["threshold"] for r in results if r["ok"]} == {profile["threshold"]}
    assert {r["site"] for r in results} == {"india-da"}, results[:2]
    assert all(
        (r["probability"] >= r["threshold"]) == (r["label"] == "Tuberculosis") for r in results if r["ok"]
    )
    assert [e["action"] for e in audit.read(models)][:1] == ["site_profile"]

    # A budget of one referral per 100 films cannot keep 90 % sensitivity: --activate refuses (the
    # profile is kept for a later decision), --override-floor switches it on with the reason audited.
    tight = ("calibrate", "--data", str(local), "--name", "tight-budget", "--referrals-per-100", "1",
             "--activate", "--n-boot", "50")  # fmt: skip
    refused = cli(*tight)
    assert refused.returncode != 0 and "below its floor" in refused.stderr, refused.stderr[-2000:]
    assert (models / "sites" / "tight-budget.json").is_file()
    overridden = cli(*tight, "--override-floor", "pilot: a second reader reads every film")
    assert overridden.returncode == 0, overridden.stderr[-2000:]
    assert json.loads(overridden.stdout)["active"] == "tight-budget"
    switches = [e for e in audit.read(models) if e["action"] == "site_activate" and e.get("site") == "tight-budget"]  # newest first
    assert [e["outcome"] for e in switches] == ["override", "refused"]
    assert switches[0]["reason"] == "pilot: a second reader reads every film"
    assert switches[0]["actor"].startswith("cli:")
    lonely = cli("calibrate", "--data", str(local), "--name", "x", "--override-floor", "why")
    assert lonely.returncode != 0 and "only goes with --activate" in lonely.stderr
