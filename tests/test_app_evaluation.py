"""The Evaluation page through AppTest: the report, the curves, the live threshold explorer, the gallery."""

import pytest
import test_app_screen as shared
from streamlit.testing.v1 import AppTest
from test_app_screen import open_page

from cxr_core import metrics
from ui import evaluation_view

pytestmark = pytest.mark.slow
seed, dashboard = shared.seed, shared.dashboard  # fixtures: a private copy of a really trained registry


def open_evaluation() -> AppTest:
    return open_page("pages/evaluation.py", 120)


def metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r}"
    return values[-1]  # the threshold explorer's come after the report's


def test_report_table_in_the_original_layout(dashboard):
    at = open_evaluation()
    current = dashboard.registry.current_version()
    assert at.selectbox(key="eval_version").value == current
    report = at.table[0].value
    assert list(report.index) == ["Normal", "Tuberculosis", "accuracy", "macro avg", "weighted avg"]
    assert list(report.columns) == ["precision", "recall", "f1-score", "support"]
    assert report.loc["accuracy", "precision"] == "" and report.loc["accuracy", "f1-score"] != ""
    ev = evaluation_view.load_evaluation(dashboard.registry, current)
    assert int(report.loc["weighted avg", "support"]) == ev.metrics["n"]
    confusion = at.table[1].value
    assert int(confusion.to_numpy().sum()) == ev.metrics["n"]
    # the sample's test split is tiny: its figures are withheld, not shown as "AUC 1.000 (95% CI 1.000-1.000)"
    n = ev.metrics["n"]
    assert n < evaluation_view.MIN_TEST_FILMS
    assert any(f"too few test films (n={n})" in md.value for md in at.markdown)
    assert not [x for x in at.metric if x.label in ("ROC AUC", "WHO minimum")]
    assert not any("95% CI" in c.value for c in at.caption)


def enlarge_test_split(root, version, n=60, mixed_sources=True, who_met=True):
    """Give a registered version a test split big enough to show figures (its own films, relabelled)."""
    import csv
    import json

    folder = root / version
    with open(folder / "predictions.csv", newline="") as handle:
        real = list(csv.DictReader(handle))
    rows = []
    for i in range(n):
        label = i % 2
        probability = (0.55 + 0.4 * (i / n)) if label else (0.05 + 0.5 * (i / n))
        row = dict(real[i % len(real)], label=label, probability=f"{probability:.4f}")
        row["source"] = ("a", "b")[(i // 2) % 2]
        rows.append(row)
    with open(folder / "predictions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = json.loads((folder / "metrics.json").read_text())
    report.update(n=n, n_positive=n // 2, who_minimum_met=who_met)
    half = {"n": n // 2, "n_positive": n // 4 if mixed_sources else 0}
    other = {"n": n // 2, "n_positive": n // 4 if mixed_sources else n // 2}
    report["per_source"] = {"a": half, "b": other}
    (folder / "metrics.json").write_text(json.dumps(report))


def test_figures_and_the_who_badge_show_once_the_split_is_big_enough(dashboard):
    version = dashboard.registry.current_version()
    enlarge_test_split(dashboard.root, version)
    at = open_evaluation()
    assert metric(at, "WHO minimum") == "met"
    assert not [w for w in at.warning if "cannot show" in w.value or "Figures withheld" in w.value]


def test_no_met_badge_stands_above_an_untrusted_data_warning(dashboard):
    version = dashboard.registry.current_version()
    enlarge_test_split(dashboard.root, version, mixed_sources=False)
    at = open_evaluation()
    assert any("No data source in the test set contains both" in w.value for w in at.warning)
    assert metric(at, "WHO minimum") == "not assessable"
    assert not any("Meets the WHO minimum" in s.value for s in at.success)


def test_threshold_explorer_is_withheld_on_a_tiny_split(dashboard):
    at = open_evaluation()
    n = evaluation_view.load_evaluation(dashboard.registry, dashboard.registry.current_version()).metrics["n"]
    assert any(f"Threshold explorer withheld: too few test films (n={n})" in w.value for w in at.warning)


def test_threshold_explorer_reacts_live(dashboard):
    version = dashboard.registry.current_version()
    enlarge_test_split(dashboard.root, version)
    at = open_evaluation()
    ev = evaluation_view.load_evaluation(dashboard.registry, version)
    slider = at.slider(key=f"threshold_{version}")
    assert slider.value == pytest.approx(ev.threshold)

    slider.set_value(0.0)
    at.run()
    assert metric(at, "Sensitivity") == "100%" and metric(at, "Specificity") == "0%"
    assert any("Below the WHO minimum" in w.value for w in at.warning)

    at.slider(key=f"threshold_{version}").set_value(1.0)
    at.run()
    assert metric(at, "Sensitivity") == "0%"

    middle = float(sorted(r["probability"] for r in ev.predictions)[len(ev.predictions) // 2])
    at.slider(key=f"threshold_{version}").set_value(round(middle, 3))
    at.run()
    expected = metrics.operating_point(ev.labels, ev.probabilities, round(middle, 3))
    assert metric(at, "Sensitivity") == evaluation_view.fmt_pct(expected["sensitivity"])

    def clinic_text():
        return next(m.value for m in at.markdown if m.value.startswith("**In a clinic"))

    at.number_input(key="prevalence_pct").set_value(1.0)
    at.run()
    rare = clinic_text()
    # the clinic's PPV/NPV lead (the first metrics of the explorer), with honest rounding
    labels = [x.label for x in at.metric][-4:]  # the explorer's, after the report's
    assert labels[:2] == ["PPV in your clinic (1% TB)", "NPV in your clinic (1% TB)"]
    npv = metric(at, "NPV in your clinic (1% TB)")
    assert npv != "100.0%" and (npv.startswith("> 99.9") or float(npv.rstrip("%")) < 100)
    at.number_input(key="prevalence_pct").set_value(30.0)
    at.run()
    common = clinic_text()
    assert rare != common and "1%" in rare and "30%" in common

    reset = next(b for b in at.button if b.label.startswith("Back to the model's operating point"))
    reset.click()
    at.run()
    assert at.slider(key=f"threshold_{version}").value == pytest.approx(ev.threshold)


def test_error_gallery_and_version_comparison(dashboard):
    at = open_evaluation()
    version = dashboard.registry.current_version()
    ev = evaluation_view.load_evaluation(dashboard.registry, version)
    wrong = evaluation_view.misclassified(ev)
    gallery = [img for img in at.image if any("false" in c for c in img.captions)]
    if wrong:
        assert len(gallery) == min(len(wrong), 12)
    else:
        assert any("every test image correctly" in s.value for s in at.success)
    compare = next(t.value for t in at.table if "v-copy" in t.value.columns)
    assert version in compare.columns
    assert "ROC AUC" in compare.index


def test_any_registered_version_can_be_inspected(dashboard):
    enlarge_test_split(dashboard.root, "v-copy")
    at = open_evaluation()
    at.selectbox(key="eval_version").set_value("v-copy")
    at.run()
    assert not at.exception
    assert at.slider(key="threshold_v-copy") is not None
    assert at.table[0].value.index[0] == "Normal"


def test_missing_predictions_do_not_break_the_page(dashboard):
    (dashboard.root / "v-copy" / "predictions.csv").unlink()
    at = open_evaluation()
    at.selectbox(key="eval_version").set_value("v-copy")
    at.run()
    assert not at.exception
    assert any("predictions.csv is missing" in i.value for i in at.info)
