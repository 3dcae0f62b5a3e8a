"""The Evaluation page through AppTest: the report, the curves, the live threshold explorer, the gallery."""

import pytest
import test_app_screen as shared
from streamlit.testing.v1 import AppTest
from test_app_screen import APP

from cxr_core import metrics
from ui import evaluation_view

pytestmark = pytest.mark.slow
seed, dashboard = shared.seed, shared.dashboard  # fixtures: a private copy of a really trained registry


def open_evaluation() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/evaluation.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


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
    assert metric(at, "ROC AUC") == f"{ev.metrics['roc_auc']:.3f}"
    assert any("95% CI" in c.value for c in at.caption)
    assert metric(at, "WHO minimum") in ("met", "not met")


def test_threshold_explorer_reacts_live(dashboard):
    at = open_evaluation()
    version = dashboard.registry.current_version()
    ev = evaluation_view.load_evaluation(dashboard.registry, version)
    slider = at.slider(key=f"threshold_{version}")
    assert slider.value == pytest.approx(ev.threshold)

    slider.set_value(0.0)
    at.run()
    assert metric(at, "Sensitivity") == "100.0%" and metric(at, "Specificity") == "0.0%"
    assert any("Below the WHO minimum" in w.value for w in at.warning)

    at.slider(key=f"threshold_{version}").set_value(1.0)
    at.run()
    assert metric(at, "Sensitivity") == "0.0%"

    middle = float(sorted(r["probability"] for r in ev.predictions)[len(ev.predictions) // 2])
    at.slider(key=f"threshold_{version}").set_value(round(middle, 3))
    at.run()
    expected = metrics.operating_point(ev.labels, ev.probabilities, round(middle, 3))
    assert metric(at, "Sensitivity") == f"{expected['sensitivity'] * 100:.1f}%"

    def clinic_text():
        return next(m.value for m in at.markdown if m.value.startswith("**In a clinic"))

    at.number_input(key="prevalence_pct").set_value(1.0)
    at.run()
    rare = clinic_text()
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
