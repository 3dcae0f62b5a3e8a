"""Tests for cxr_core.metrics: hand-worked cases, agreement with scikit-learn, and the properties the
registry and quality gate rely on (threshold floor honoured, JSON-safe output, reproducible CIs)."""

import json
import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    classification_report,
    confusion_matrix,
    roc_auc_score,
)

from cxr_core import metrics as m

# Hand-worked case, threshold 0.5, "prob >= threshold" is TB:
#   TB (label 1):     0.9 0.8 0.6 -> called TB (tp = 3);  0.3 -> missed (fn = 1)
#   Normal (label 0): 0.7 and 0.5 (boundary, >=) -> false alarms (fp = 2);
#                     0.4 0.2 0.1 0.05 -> correctly Normal (tn = 4)
#   sensitivity = 3/4 = 0.75     specificity = 4/6 = 0.6667
#   PPV = 3/(3+2) = 0.6          NPV = 4/(4+1) = 0.8        accuracy = 7/10
HAND_Y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
HAND_P = [0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.4, 0.2, 0.1, 0.05]

# Threshold-choice case: 5 TB and 6 Normal with interleaved scores.
#   TB:     0.95 0.90 0.80 0.70 0.50      Normal: 0.85 0.60 0.55 0.40 0.30 0.20
#   t=0.80: tp 3 (sens 0.6), fp 1 (spec 5/6)     t=0.70: tp 4 (sens 0.8), fp 1 (spec 5/6)
#   t=0.60: tp 4 (sens 0.8), fp 2 (spec 4/6)     t=0.50: tp 5 (sens 1.0), fp 3 (spec 3/6)
CHOICE_Y = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
CHOICE_P = [0.95, 0.90, 0.80, 0.70, 0.50, 0.85, 0.60, 0.55, 0.40, 0.30, 0.20]


def synthetic(n, seed=0, separation=1.5, prevalence=0.4):
    """Scores from two overlapping normal distributions squashed to (0, 1): a realistic AUC ~0.85."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    y[:2] = [0, 1]
    logit = rng.normal(0, 1, n) + separation * y - 0.5
    return y, 1 / (1 + np.exp(-logit))


def assert_plain_json(obj, path="root"):
    """Only the types json writes back unchanged: no NumPy scalars, no NaN/inf."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str), path
            assert_plain_json(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            assert_plain_json(v, f"{path}[{i}]")
    elif isinstance(obj, float):
        assert type(obj) is float and math.isfinite(obj), path
    else:
        assert obj is None or type(obj) in (str, int, bool), f"{path}: {type(obj)}"


# ------------------------------------------------------------------------------------------------
# operating point and report


def test_operating_point_matches_hand_computation():
    op = m.operating_point(HAND_Y, HAND_P, 0.5)
    assert (op["tp"], op["fp"], op["tn"], op["fn"]) == (3, 2, 4, 1)
    assert op["sensitivity"] == pytest.approx(0.75)
    assert op["specificity"] == pytest.approx(4 / 6)
    assert op["ppv"] == pytest.approx(0.6)
    assert op["npv"] == pytest.approx(0.8)
    assert op["accuracy"] == pytest.approx(0.7)
    assert op["threshold"] == 0.5
    assert_plain_json(op)


def test_operating_point_undefined_rates_are_none():
    # no TB cases -> sensitivity undefined; nothing called TB -> PPV undefined
    op = m.operating_point([0, 0, 0], [0.1, 0.2, 0.3], 0.5)
    assert op["sensitivity"] is None and op["ppv"] is None
    assert op["specificity"] == 1.0 and op["npv"] == 1.0
    assert json.dumps(op, allow_nan=False)


def test_classification_report_agrees_with_sklearn():
    y_pred = (np.asarray(HAND_P) >= 0.5).astype(int)
    ours = m.classification_report_table(HAND_Y, y_pred)
    ref = classification_report(
        HAND_Y, y_pred, target_names=["Normal", "Tuberculosis"], output_dict=True, zero_division=0
    )
    assert set(ours) == {"Normal", "Tuberculosis", "accuracy", "macro avg", "weighted avg"}
    assert ours["Tuberculosis"]["recall"] == pytest.approx(0.75)  # = sensitivity
    assert ours["Normal"]["recall"] == pytest.approx(4 / 6)  # = specificity
    assert ours["Tuberculosis"]["support"] == 4
    for key in ("Normal", "Tuberculosis", "macro avg", "weighted avg"):
        for metric in ("precision", "recall", "f1-score"):
            assert ours[key][metric] == pytest.approx(ref[key][metric])
    assert ours["accuracy"] == pytest.approx(ref["accuracy"])


def test_classification_report_with_one_class_absent():
    report = m.classification_report_table([1, 1, 1], [1, 0, 1])
    assert report["Normal"]["support"] == 0
    assert report["Tuberculosis"]["support"] == 3
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert_plain_json(report)


def test_input_validation():
    with pytest.raises(ValueError):
        m.operating_point([0, 1], [0.5], 0.5)
    with pytest.raises(ValueError):
        m.operating_point([0, 2], [0.5, 0.5], 0.5)
    with pytest.raises(ValueError):
        m.operating_point([0, 1], [0.5, 1.2], 0.5)
    with pytest.raises(ValueError):
        m.operating_point([0, 1], [0.5, float("nan")], 0.5)
    with pytest.raises(ValueError):
        m.evaluate([], [], 0.5)


# ------------------------------------------------------------------------------------------------
# PPV/NPV at prevalence, WHO check


def test_ppv_npv_at_prevalence_by_hand():
    # sens 0.9, spec 0.8, prevalence 10%: per 1000 screened, 100 TB -> 90 tp, 10 fn;
    # 900 Normal -> 720 tn, 180 fp.  PPV = 90/270 = 1/3, NPV = 720/730
    ppv, npv = m.ppv_npv_at_prevalence(0.9, 0.8, 0.1)
    assert ppv == pytest.approx(1 / 3)
    assert npv == pytest.approx(720 / 730)


def test_ppv_npv_at_own_prevalence_equals_observed():
    op = m.operating_point(HAND_Y, HAND_P, 0.5)
    ppv, npv = m.ppv_npv_at_prevalence(op["sensitivity"], op["specificity"], 0.4)
    assert ppv == pytest.approx(op["ppv"])
    assert npv == pytest.approx(op["npv"])


def test_ppv_npv_degenerate_and_invalid():
    # a test that calls nobody TB (sens 0, spec 1) has no PPV
    assert m.ppv_npv_at_prevalence(0.0, 1.0, 0.1)[0] is None
    with pytest.raises(ValueError):
        m.ppv_npv_at_prevalence(0.9, 0.8, 1.5)


def test_who_minimum():
    assert m.WHO_MIN_SENSITIVITY == 0.90 and m.WHO_MIN_SPECIFICITY == 0.70
    assert m.who_minimum_met(0.90, 0.70)
    assert not m.who_minimum_met(0.899, 0.99)
    assert not m.who_minimum_met(0.99, 0.699)
    assert not m.who_minimum_met(None, 0.9)


# ------------------------------------------------------------------------------------------------
# thresholds


def test_choose_threshold_picks_max_specificity_meeting_floor():
    assert m.select_threshold(CHOICE_Y, CHOICE_P, min_sensitivity=0.8).threshold == 0.70
    assert m.select_threshold(CHOICE_Y, CHOICE_P, min_sensitivity=1.0).threshold == 0.50
    # sens >= 0.6 is met at 0.80 and 0.70 with the same specificity 5/6: the one catching more TB wins
    assert m.select_threshold(CHOICE_Y, CHOICE_P, min_sensitivity=0.6).threshold == 0.70


def test_choose_threshold_is_optimal_by_brute_force():
    y, p = synthetic(300, seed=3)
    for floor in (0.5, 0.8, 0.9, 0.95, 0.99, 1.0):
        t = m.select_threshold(y, p, min_sensitivity=floor).threshold
        op = m.operating_point(y, p, t)
        assert op["sensitivity"] >= floor
        for cand in np.unique(p):
            other = m.operating_point(y, p, cand)
            if other["sensitivity"] >= floor:
                assert other["specificity"] <= op["specificity"] + 1e-12


@pytest.mark.parametrize("seed", range(5))
def test_choose_threshold_never_below_floor(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 57)
    y[:2] = [0, 1]
    p = np.round(rng.random(57), 2)  # heavy ties
    floor = float(rng.uniform(0.05, 1.0))
    choice = m.select_threshold(y, p, min_sensitivity=floor)
    op = m.operating_point(y, p, choice.threshold)
    assert op["sensitivity"] >= floor
    assert choice.sensitivity == pytest.approx(op["sensitivity"])
    assert choice.specificity == pytest.approx(op["specificity"])


def test_choose_threshold_floor_zero_gives_finite_threshold():
    t = m.select_threshold([0, 1, 1], [0.2, 0.9, 1.0], min_sensitivity=0.0).threshold
    assert math.isfinite(t)
    assert m.operating_point([0, 1, 1], [0.2, 0.9, 1.0], t)["specificity"] == 1.0


def test_choose_threshold_falls_back_without_both_classes():
    choice = m.select_threshold([0, 0, 0], [0.1, 0.6, 0.9])
    assert choice.threshold == 0.5
    assert "no Tuberculosis cases" in choice.reason
    assert m.select_threshold([1, 1], [0.3, 0.9]).threshold == 0.5
    assert json.dumps(choice.as_dict(), allow_nan=False)


def test_youden_and_fixed_rules():
    # J at t=0.70 is 0.8 - 1/6 = 0.633, the maximum over all thresholds of CHOICE
    assert m.select_threshold(CHOICE_Y, CHOICE_P, rule="youden").threshold == 0.70
    choice = m.select_threshold(CHOICE_Y, CHOICE_P, rule="youden")
    assert choice.rule == "youden" and "Youden" in choice.reason
    assert m.select_threshold(CHOICE_Y, CHOICE_P, rule="fixed", fixed_threshold=0.42).threshold == 0.42
    with pytest.raises(ValueError):
        m.select_threshold(CHOICE_Y, CHOICE_P, rule="magic")


def test_threshold_table_matches_operating_point():
    y, p = synthetic(120, seed=5)
    p = np.round(p, 2)
    table = m.threshold_table(y, p)
    assert [r["threshold"] for r in table] == sorted(np.unique(p).tolist())
    for row in table:
        op = m.operating_point(y, p, row["threshold"])
        assert row["sensitivity"] == pytest.approx(op["sensitivity"])
        assert row["specificity"] == pytest.approx(op["specificity"])
    for t in (0.0, 0.333, 0.5, 0.777, 0.99999):
        looked = m.lookup_threshold_table(table, t)
        op = m.operating_point(y, p, t)
        assert looked["sensitivity"] == pytest.approx(op["sensitivity"])
        assert looked["specificity"] == pytest.approx(op["specificity"])
    assert_plain_json(table)


def test_threshold_table_single_class():
    table = m.threshold_table([0, 0, 0], [0.1, 0.2, 0.2])
    assert len(table) == 2
    assert all(r["sensitivity"] is None for r in table)
    assert table[0]["specificity"] == pytest.approx(0.0)
    assert m.lookup_threshold_table(table, 0.9) == {"threshold": 0.9, "sensitivity": None, "specificity": 1.0}


# ------------------------------------------------------------------------------------------------
# bootstrap


def test_bootstrap_ci_contains_point_and_narrows_with_more_data():
    y_small, p_small = synthetic(80, seed=1)
    y_big, p_big = synthetic(800, seed=1)
    lo_s, hi_s = m.bootstrap_ci(y_small, p_small, roc_auc_score, n_boot=500)
    lo_b, hi_b = m.bootstrap_ci(y_big, p_big, roc_auc_score, n_boot=500)
    assert lo_s <= roc_auc_score(y_small, p_small) <= hi_s
    assert lo_b <= roc_auc_score(y_big, p_big) <= hi_b
    assert (hi_b - lo_b) < 0.6 * (hi_s - lo_s)


def test_bootstrap_ci_seeded_reproducibility():
    y, p = synthetic(150, seed=2)
    a = m.bootstrap_ci(y, p, roc_auc_score, n_boot=300, seed=7)
    assert a == m.bootstrap_ci(y, p, roc_auc_score, n_boot=300, seed=7)
    assert a != m.bootstrap_ci(y, p, roc_auc_score, n_boot=300, seed=8)


@pytest.mark.parametrize("fn", [roc_auc_score, average_precision_score])
@pytest.mark.parametrize("stratified", [True, False])
def test_vectorised_bootstrap_equals_per_resample_sklearn(fn, stratified):
    y, p = synthetic(90, seed=4)
    p = np.round(p, 1)  # ties, where rank and step-wise AP definitions are easiest to get wrong
    fast = m.bootstrap_ci(y, p, fn, n_boot=200, seed=3, stratified=stratified)
    slow = m.bootstrap_ci(
        y, p, lambda a, b: fn(a, b), n_boot=200, seed=3, stratified=stratified, requires_both_classes=True
    )
    assert fast == pytest.approx(slow, abs=1e-12)


def test_bootstrap_of_auc_is_vectorised_not_a_loop_of_sklearn_calls(monkeypatch):
    """What keeps 1000 resamples cheap (timed in bench/, not here): no per-resample scikit-learn call."""
    y, p = synthetic(300, seed=6)
    expected = {fn: m.bootstrap_ci(y, p, fn, n_boot=1000) for fn in ("roc_auc", "pr_auc")}
    calls = []
    import sklearn.metrics

    for name in ("roc_auc_score", "average_precision_score"):
        real = getattr(sklearn.metrics, name)
        monkeypatch.setattr(
            sklearn.metrics, name, lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k)
        )
    for fn in ("roc_auc", "pr_auc"):
        assert m.bootstrap_ci(y, p, fn, n_boot=1000) == expected[fn]
        assert None not in expected[fn]
    assert calls == []


def test_bootstrap_skips_single_class_resamples():
    # 2 TB among 40: a plain bootstrap often draws no TB at all; the metric must never see that
    y = np.zeros(40, dtype=int)
    y[:2] = 1
    p = np.linspace(0.05, 0.95, 40)

    def auc_that_objects(a, b):
        assert 0 < a.sum() < a.size, "single-class resample reached the metric"
        return roc_auc_score(a, b)

    lo, hi = m.bootstrap_ci(y, p, auc_that_objects, n_boot=200, stratified=False, requires_both_classes=True)
    assert lo is not None and lo <= hi


def test_bootstrap_gives_up_when_most_resamples_are_undefined():
    y, p = synthetic(50, seed=8)

    def flaky(undefined_out_of_5):
        calls = [0]

        def metric(a, b):
            calls[0] += 1
            return float("nan") if calls[0] % 5 < undefined_out_of_5 else float(b.mean())

        return metric

    assert m.bootstrap_ci(y, p, flaky(3), n_boot=100) == (None, None)  # 60% undefined
    assert None not in m.bootstrap_ci(y, p, flaky(2), n_boot=100)  # 40% undefined


def test_json_cleaning_removes_numpy_and_non_finite_values():
    raw = {
        "a": np.float32(0.5),
        "b": np.int64(3),
        "c": (np.nan, np.inf),
        "d": np.array([1.0, 2.0]),
        "e": np.bool_(1),
    }
    assert m._jsonable(raw) == {"a": 0.5, "b": 3, "c": [None, None], "d": [1.0, 2.0], "e": True}
    assert_plain_json(m._jsonable(raw))


def test_bootstrap_undefined_cases():
    assert m.bootstrap_ci([0, 0, 0], [0.1, 0.2, 0.3], roc_auc_score) == (None, None)
    assert m.bootstrap_ci([0, 1], [0.1, 0.9], roc_auc_score, n_boot=0) == (None, None)
    # a metric that is always undefined gives no interval rather than a made-up one
    assert m.bootstrap_ci([0, 1, 1], [0.1, 0.5, 0.9], lambda a, b: float("nan"), n_boot=50) == (None, None)
    # a metric that needs no second class still works on single-class data
    lo, hi = m.bootstrap_ci([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], brier_score_loss, n_boot=100)
    assert 0.01 <= lo <= hi <= 0.16


# ------------------------------------------------------------------------------------------------
# calibration


def test_ece_zero_for_perfectly_calibrated_bins():
    # bin (0.2, 0.3]: four cases at 0.25, one TB (25%); bin (0.7, 0.8]: four at 0.75, three TB (75%)
    y = [1, 0, 0, 0, 1, 1, 1, 0]
    p = [0.25] * 4 + [0.75] * 4
    assert m.expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)


def test_ece_large_for_miscalibrated_model():
    # says 90% TB for every case, none has TB: gap 0.9 in the only occupied bin
    assert m.expected_calibration_error([0] * 10, [0.9] * 10) == pytest.approx(0.9)
    # half the cases overconfident the other way: gaps 0.9 and 0.8, equal weight
    y = [0] * 5 + [1] * 5
    p = [0.9] * 5 + [0.2] * 5
    assert m.expected_calibration_error(y, p) == pytest.approx(0.85)


def test_ece_bin_edges_follow_sklearn():
    # sklearn's bins are closed on the right: 0.1 falls in [0, 0.1], 0.15 in (0.1, 0.2]
    # gaps |0.1 - 0| and |0.15 - 1| -> ECE = (0.1 + 0.85) / 2 = 0.475 (0.375 if 0.1 joined 0.15)
    assert m.expected_calibration_error([0, 1], [0.1, 0.15]) == pytest.approx(0.475)


def test_ece_matches_sklearn_calibration_curve_bins():
    y, p = synthetic(400, seed=9)
    p = np.round(p, 2)  # some values exactly on bin edges, sharing bins with values off the edges
    frac, mean = calibration_curve(y, p, n_bins=10)
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], p), minlength=10)
    counts = counts[counts > 0]
    expected = float((counts * np.abs(frac - mean)).sum() / len(y))
    assert m.expected_calibration_error(y, p, n_bins=10) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------
# evaluate and curves


def test_evaluate_agrees_with_sklearn_and_is_plain_json():
    y, p = synthetic(200, seed=11)
    p = p.astype(np.float32)
    result = m.evaluate(y, p, 0.5, n_boot=200)
    assert_plain_json(result)
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert result["n"] == 200 and result["n_positive"] == int(y.sum())
    assert result["prevalence"] == pytest.approx(y.mean())
    assert result["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert result["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert result["brier"] == pytest.approx(brier_score_loss(y, p))
    assert result["confusion_matrix"] == confusion_matrix(y, (p >= 0.5).astype(int)).tolist()
    lo, hi = result["roc_auc_ci"]
    assert lo <= result["roc_auc"] <= hi
    lo, hi = result["sensitivity_ci"]
    assert lo <= result["sensitivity"] <= hi
    assert result["who_minimum_met"] == m.who_minimum_met(result["sensitivity"], result["specificity"])
    assert result["classification_report"]["Tuberculosis"]["recall"] == pytest.approx(result["sensitivity"])
    assert "per_source" not in result


def test_wilson_interval_known_value():
    # 8/10: Wilson 95% interval (0.490, 0.943), the textbook value
    lo, hi = m.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert m.wilson_interval(10, 10)[1] == 1.0
    assert m.wilson_interval(0, 0) == (None, None)


def test_evaluate_per_source_handles_single_class_source():
    y, p = synthetic(120, seed=12)
    sources = np.where(np.arange(120) < 80, "tbx11k", "montgomery").astype(object)
    # a third source with only Normal films and one with only TB
    y = np.concatenate([y, [0] * 10, [1] * 6])
    p = np.concatenate(
        [p, [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.6], [0.3, 0.6, 0.7, 0.8, 0.9, 0.95]]
    )
    sources = list(sources) + ["openist"] * 10 + ["tb_only"] * 6
    result = m.evaluate(y, p, 0.5, sources=sources, n_boot=100)
    assert json.dumps(result, allow_nan=False)
    assert_plain_json(result)
    per = result["per_source"]
    assert set(per) == {"tbx11k", "montgomery", "openist", "tb_only"}
    normal_only = per["openist"]
    assert normal_only["n"] == 10 and normal_only["n_positive"] == 0
    assert normal_only["roc_auc"] is None and normal_only["roc_auc_ci"] == [None, None]
    assert normal_only["pr_auc"] is None
    assert normal_only["sensitivity"] is None and normal_only["sensitivity_ci"] == [None, None]
    assert normal_only["specificity"] == pytest.approx(9 / 10)  # only 0.6 >= 0.5
    tb_only = per["tb_only"]
    assert tb_only["specificity"] is None and tb_only["sensitivity"] == pytest.approx(5 / 6)
    mixed = per["tbx11k"]
    mask = np.asarray(sources) == "tbx11k"
    assert mixed["roc_auc"] == pytest.approx(roc_auc_score(y[mask], p[mask]))
    assert sum(s["n"] for s in per.values()) == result["n"]


def test_evaluate_rejects_misaligned_sources():
    with pytest.raises(ValueError):
        m.evaluate(HAND_Y, HAND_P, 0.5, sources=["a"] * 3, n_boot=0)


def test_curves_are_finite_and_dvc_shaped():
    y, p = synthetic(150, seed=13)
    p[0] = 1.0  # roc_curve's first threshold is +inf; it must become a finite number above 1.0's cases
    out = m.curves(y, p, 0.5)
    assert set(out) == {"roc", "pr", "calibration", "confusion"}
    text = json.dumps(out, allow_nan=False)
    assert "Infinity" not in text
    assert_plain_json(out)
    assert out["roc"][0]["fpr"] == 0.0 and out["roc"][-1]["tpr"] == 1.0
    assert all(math.isfinite(r["threshold"]) for r in out["roc"])
    assert out["roc"][0]["threshold"] > 1.0
    assert set(out["pr"][0]) == {"recall", "precision"}
    assert sum(r["count"] for r in out["calibration"]) == 150
    assert len(out["confusion"]) == 150
    op = m.operating_point(y, p, 0.5)
    tp_rows = [r for r in out["confusion"] if r == {"actual": "Tuberculosis", "predicted": "Tuberculosis"}]
    fp_rows = [r for r in out["confusion"] if r == {"actual": "Normal", "predicted": "Tuberculosis"}]
    assert len(tp_rows) == op["tp"] and len(fp_rows) == op["fp"]


def test_curves_single_class():
    out = m.curves([0, 0, 0], [0.1, 0.4, 0.7], 0.5)
    assert out["roc"] == [] and out["pr"] == []
    assert len(out["calibration"]) == 3 and len(out["confusion"]) == 3
    assert json.dumps(out, allow_nan=False)


def test_sensitivity_bound_holds_the_floor_with_margin():
    # 200 TB films scored 0.005..1.0 and 200 normals 0.0025..0.5: at the plain floor the threshold sits where
    # exactly 180 TB films are found; the bound asks the Wilson lower end to reach 0.90, so more of them.
    y = np.r_[np.ones(200), np.zeros(200)]
    p = np.r_[np.linspace(0.005, 1.0, 200), np.linspace(0.0025, 0.5, 200)]
    floor = m.select_threshold(y, p, rule="sensitivity_floor", min_sensitivity=0.90)
    bound = m.select_threshold(y, p, rule="sensitivity_bound", min_sensitivity=0.90)
    assert floor.sensitivity == pytest.approx(0.90)
    found = int(round(bound.sensitivity * 200))
    assert m.wilson_interval(found, 200)[0] >= 0.90 > m.wilson_interval(found - 1, 200)[0]
    assert bound.threshold < floor.threshold and bound.specificity < floor.specificity
    assert bound.rule == "sensitivity_bound" and "lower 95 % bound" in bound.reason
    assert m.operating_point(y, p, bound.threshold)["sensitivity"] == pytest.approx(bound.sensitivity)


def test_sensitivity_bound_with_too_few_tb_films_finds_them_all():
    # five TB films: even 5/5 has a Wilson lower bound of 0.57, so no threshold reaches 0.90
    choice = m.select_threshold(CHOICE_Y, CHOICE_P, rule="sensitivity_bound", min_sensitivity=0.90)
    assert choice.sensitivity == 1.0 and choice.threshold == 0.50
    assert choice.reason.startswith("highest specificity that finds every TB film")  # "chosen as the ..."
    assert "no threshold's lower 95 % sensitivity bound reaches 0.9" in choice.reason
    rates = np.array([0.0, 0.5, 0.9, 1.0])
    np.testing.assert_allclose(m._wilson_lower(rates, 40), [m.wilson_interval(int(r * 40), 40)[0] for r in rates])
