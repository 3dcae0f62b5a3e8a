"""ui.views: what the pages show, tested without streamlit or TensorFlow."""

import csv
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, classification_report

from cxr_core import metrics
from cxr_core.errors import DatasetError
from cxr_core.imaging.decode import DecodedImage
from cxr_core.modelling.predictor import NORMAL, TB, Prediction, ScreenedImage
from cxr_core.registry.store import Registry
from ui import evaluation_view, retrain_view, screening_view, versions_view

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = PROJECT_ROOT / "data" / "sample"
PREDICTOR = SimpleNamespace(threshold=0.42, version="v-test", site=None)


def screened(name, probability=None, error=None, metadata=None, warnings=()):
    if error is not None:
        return ScreenedImage(name=name, ok=False, error=error)
    image = DecodedImage(
        pixels=np.zeros((300, 300), np.uint8),
        format="DICOM" if metadata else "PNG",
        width=300,
        height=300,
        bit_depth=8,
        warnings=list(warnings),
        metadata=dict(metadata or {}),
    )
    prediction = Prediction(
        probability=probability,
        label=TB if probability >= PREDICTOR.threshold else NORMAL,
        threshold=PREDICTOR.threshold,
        heatmap=np.zeros((28, 28), np.float32),
    )
    return ScreenedImage(name=name, ok=True, image=image, prediction=prediction)


# ------------------------------------------------------------------------------------ screening


def test_decisions_are_plain_words():
    assert screening_view.decision_text(screened("a.png", 0.9)) == screening_view.DECISION_TB
    assert screening_view.decision_text(screened("b.png", 0.1)) == screening_view.DECISION_NORMAL
    assert (
        screening_view.decision_text(screened("c.png", error="not an image"))
        == screening_view.DECISION_FAILED
    )
    assert "refer" in screening_view.ACTIONS[screening_view.DECISION_TB]
    t = PREDICTOR.threshold
    # close to the threshold: borderline, and which side of it, from the unrounded comparison
    assert screening_view.decision_text(screened("d.png", t + 0.01)) == screening_view.DECISION_BORDERLINE_TB
    assert screening_view.decision_text(screened("e.png", t - 0.01)) == screening_view.DECISION_BORDERLINE_NORMAL


def test_the_csv_compares_and_prints_unrounded_values_in_the_pages_vocabulary():
    """p = 0.102373 beside a threshold of 0.10237301 is below it: the CSV must show both digits that say so."""
    item = screened("a.png", 0.5)
    item.prediction.threshold, item.prediction.probability = 0.10237301, 0.102373
    item.prediction.label = NORMAL
    unreadable = screened("b.png", error="image file is truncated or corrupt")
    rows = screening_view.summary_rows([item, unreadable], PREDICTOR)
    parsed = list(csv.DictReader(io.StringIO(screening_view.summary_csv(rows).decode("utf-8-sig"))))
    assert float(parsed[0]["tb_probability"]) < float(parsed[0]["threshold"])
    assert parsed[0]["threshold"] == "0.10237301" and parsed[0]["tb_probability"] == "0.102373"
    assert parsed[0]["result"] == screening_view.DECISION_BORDERLINE_NORMAL
    assert parsed[1]["result"] == "Unreadable" and parsed[1]["tb_probability"] == ""
    assert {row["result"] for row in parsed} <= set(screening_view.RESULTS)
    assert "label" not in parsed[0] and "priority" not in parsed[0]  # no second vocabulary
    shown = screening_view.table_rows(rows)[0]["tb_probability"]
    assert shown != f"{item.prediction.threshold:.{len(shown) - 2}f}"  # the page shows enough digits too


def test_identity_columns_come_first_when_shown():
    item = screened("scan.dcm", 0.7, metadata={"PatientName": "Doe^Jane", "PatientID": "1"})
    row = screening_view.summary_rows([item], PREDICTOR, include_identifiers=True)[0]
    assert list(row)[: len(screening_view.IDENTIFIER_FIELDS)] == list(screening_view.IDENTIFIER_FIELDS.values())
    header = screening_view.summary_csv([row]).decode("utf-8-sig").splitlines()[0].split(",")
    assert header[:2] == ["patient_name", "patient_id"]


def test_probability_never_looks_equal_to_the_threshold():
    assert screening_view.fmt_probability(0.9076, 0.9081) == ("0.9076", "0.9081")
    assert screening_view.fmt_probability(0.25, 0.6241) == ("0.250", "0.624")
    assert screening_view.fmt_probability(0.5, 0.5) == ("0.500", "0.500")


def test_batch_counts():
    items = [screened("a", 0.9), screened("b", 0.1, warnings=["small image"]), screened("c", error="bad")]
    assert screening_view.batch_counts(items) == {
        "total": 3,
        "tb": 1,
        "normal": 1,
        "failed": 1,
        "with_warnings": 1,
    }


def test_summary_csv_neutralises_formulas_in_file_names():
    items = [
        screened('=HYPERLINK("http://evil","click").png', 0.9),
        screened("+cmd|' /C calc'!A0.png", 0.1),
        screened("-2+3.png", error="image file is truncated or corrupt"),
        screened("@SUM(A1).png", 0.5),
        screened("ordinary.png", 0.2),
    ]
    rows = screening_view.summary_rows(items, PREDICTOR)
    text = screening_view.summary_csv(rows).decode("utf-8-sig")
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [row["file"][0] for row in parsed[:4]] == ["'"] * 4
    assert parsed[4]["file"] == "ordinary.png"
    for row in parsed:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@")), value
    assert parsed[0]["result"] == screening_view.DECISION_TB
    assert parsed[2]["problem"] == "image file is truncated or corrupt"
    assert parsed[2]["tb_probability"] == ""
    assert parsed[0]["model_version"] == "v-test"


def test_identifiers_stay_out_unless_opted_in():
    ids = {"PatientName": "Doe^Jane", "PatientID": "123456", "Modality": "DX"}
    item = screened("scan.dcm", 0.7, metadata=ids)
    plain = screening_view.summary_csv(screening_view.summary_rows([item], PREDICTOR)).decode("utf-8-sig")
    assert "Doe" not in plain and "123456" not in plain
    assert all("Doe" not in value for _, value in screening_view.image_details(item))
    with_ids = screening_view.summary_csv(
        screening_view.summary_rows([item], PREDICTOR, include_identifiers=True)
    )
    row = next(csv.DictReader(io.StringIO(with_ids.decode("utf-8-sig"))))
    assert row["patient_name"] == "Doe, Jane" and row["patient_id"] == "123456"
    details = dict(screening_view.image_details(item, include_identifiers=True))
    assert details["Patient"] == "Doe, Jane"
    assert details["Modality"] == "DX"


def test_shrunk_item_draws_the_same_overlay():
    from cxr_core.imaging.preprocess import CropBox
    from cxr_core.modelling.gradcam import overlay

    rng = np.random.default_rng(1)
    side = screening_view.VIEWER_SIDE  # the viewer keeps films up to this size
    pixels = rng.integers(0, 255, (3000, 2400), dtype=np.uint8)
    item = screened("big.png", 0.7)
    item.image.pixels, item.box = pixels, CropBox(200, 0, 2600, 2400)
    item.prediction.heatmap = rng.random((28, 28)).astype(np.float32)
    expected = overlay(pixels, item.prediction.heatmap, item.box, 0.5, max_side=side)
    screening_view.shrink_for_display(item)
    assert max(item.image.pixels.shape) == side and item.image.width == 300
    got = overlay(item.image.pixels, item.prediction.heatmap, item.box, 0.5, max_side=side)
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < 1.0


def test_display_gray_shrinks_large_images_only():
    assert screening_view.display_gray(np.zeros((2000, 1000), np.uint8)).shape == (768, 384)
    small = np.zeros((300, 200), np.uint8)
    assert screening_view.display_gray(small) is small


# ------------------------------------------------------------------------------------ evaluation


@pytest.fixture
def version_dir(tmp_path):
    """A registry with one hand-made version whose numbers are known."""
    rng = np.random.default_rng(0)
    y = np.array([0] * 30 + [1] * 20)
    p = np.clip(np.where(y == 1, rng.normal(0.7, 0.2, y.size), rng.normal(0.3, 0.2, y.size)), 0, 1)
    threshold = 0.5
    report = metrics.evaluate(y, p, threshold, sources=["a"] * 25 + ["b"] * 25, n_boot=50)
    root = tmp_path / "models"
    folder = root / "v1"
    (folder / "plots").mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"not a real model")
    meta = {
        "version": "v1",
        "created": "2026-01-01T00:00:00Z",
        "threshold": threshold,
        "threshold_rule": "test",
        "model_sha256": "0" * 64,
        "metrics": {
            "roc_auc": report["roc_auc"],
            "roc_auc_ci": report["roc_auc_ci"],
            "sensitivity": report["sensitivity"],
            "specificity": report["specificity"],
            "test_images": 50,
        },
    }
    (folder / "metadata.json").write_text(json.dumps(meta))
    (folder / "metrics.json").write_text(json.dumps(report))
    for name, rows in metrics.curves(y, p, threshold).items():
        (folder / "plots" / f"{name}.json").write_text(json.dumps(rows))
    with open(folder / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "member", "source", "label", "probability", "predicted", "correct"])
        for i, (label, prob) in enumerate(zip(y, p, strict=True)):
            predicted = int(prob >= threshold)
            writer.writerow(
                [
                    f"/nowhere/img{i}.png",
                    "",
                    "a",
                    label,
                    round(float(prob), 6),
                    predicted,
                    int(predicted == label),
                ]
            )
    (folder / "MODEL_CARD.md").write_text("# card\n")
    return SimpleNamespace(registry=Registry(root), y=y, p=np.round(p, 6), threshold=threshold, report=report)


def test_load_evaluation_reads_every_artifact(version_dir):
    ev = evaluation_view.load_evaluation(version_dir.registry, "v1")
    assert ev.problems == []
    assert len(ev.predictions) == 50 and ev.threshold == 0.5
    assert ev.plots["roc"] and ev.plots["calibration"]
    assert ev.card.startswith("# card")
    assert ev.operating_point["sensitivity"] == version_dir.report["sensitivity"]
    assert versions_view.test_set_text(ev) == "50 images, 20 with TB"


def test_site_confound_warning(version_dir):
    ev = evaluation_view.load_evaluation(version_dir.registry, "v1")
    assert evaluation_view.site_confound_warning(ev) is None  # both sources hold both classes
    ev.metrics["per_source"] = {
        "tbx11k": {"n": 20, "n_positive": 20},
        "openist": {"n": 30, "n_positive": 0},
    }
    assert "hospital" in evaluation_view.site_confound_warning(ev)
    ev.metrics["per_source"]["shenzhen"] = {"n": 10, "n_positive": 4}
    assert evaluation_view.site_confound_warning(ev) is None


def test_missing_artifacts_are_reported_not_fatal(version_dir):
    folder = version_dir.registry.root / "v1"
    (folder / "predictions.csv").unlink()
    (folder / "metrics.json").unlink()
    shutil.rmtree(folder / "plots")
    ev = evaluation_view.load_evaluation(version_dir.registry, "v1")
    assert len(ev.problems) == 2
    assert ev.predictions == [] and ev.plots["roc"] == []
    assert ev.metrics["roc_auc"] == version_dir.report["roc_auc"]  # the summary in metadata.json
    with pytest.raises(DatasetError):
        evaluation_view.explore_threshold(ev, 0.5, 0.05)


def test_report_table_has_the_original_layout_and_matches_sklearn(version_dir):
    report = version_dir.report["classification_report"]
    rows = evaluation_view.report_table(report)
    assert [r[""] for r in rows] == ["Normal", "Tuberculosis", "accuracy", "macro avg", "weighted avg"]
    accuracy = rows[2]
    assert accuracy["precision"] is None and accuracy["recall"] is None and accuracy["support"] == 50
    predicted = (version_dir.p >= version_dir.threshold).astype(int)
    expected = classification_report(
        version_dir.y, predicted, target_names=["Normal", "Tuberculosis"], output_dict=True
    )
    for row in rows:
        if row[""] == "accuracy":  # the view's own cell against an independent count, not sklearn with itself
            correct = int((predicted == np.asarray(version_dir.y)).sum())
            assert row["f1-score"] == pytest.approx(correct / len(predicted))
            assert row["f1-score"] == pytest.approx(accuracy_score(version_dir.y, predicted))
            continue
        for column in ("precision", "recall", "f1-score", "support"):
            assert row[column] == pytest.approx(expected[row[""]][column]), (row[""], column)


def test_threshold_explorer_matches_metrics_and_bayes(version_dir):
    ev = evaluation_view.load_evaluation(version_dir.registry, "v1")
    for threshold in (0.0, 0.31, 0.5, 0.77, 1.0):
        result = evaluation_view.explore_threshold(ev, threshold, 0.02)
        expected = metrics.operating_point(version_dir.y, version_dir.p, threshold)
        assert result["sensitivity"] == pytest.approx(expected["sensitivity"])
        assert result["specificity"] == pytest.approx(expected["specificity"])
        assert (result["ppv"], result["npv"]) == (expected["ppv"], expected["npv"])
        assert result["who_minimum_met"] == metrics.who_minimum_met(
            expected["sensitivity"], expected["specificity"]
        )
    low = evaluation_view.explore_threshold(ev, 0.5, 0.01)
    high = evaluation_view.explore_threshold(ev, 0.5, 0.30)
    assert low["clinic_ppv"] < high["clinic_ppv"]  # PPV falls with prevalence; sensitivity does not move
    assert low["sensitivity"] == high["sensitivity"]
    per = low["per_1000"]
    assert per["with_tb"] == pytest.approx(10)
    assert per["detected"] + per["missed"] == pytest.approx(10)
    everyone = evaluation_view.explore_threshold(ev, 0.0, 0.05)
    assert (
        everyone["sensitivity"] == 1.0 and everyone["specificity"] == 0.0 and not everyone["who_minimum_met"]
    )


def test_misclassified_lists_missed_tb_first_worst_first(version_dir):
    ev = evaluation_view.load_evaluation(version_dir.registry, "v1")
    rows = evaluation_view.misclassified(ev)
    kinds = [r["label"] for r in rows]
    assert kinds == sorted(kinds, reverse=True)  # all label-1 (missed TB) before label-0 (false alarms)
    missed = [r["probability"] for r in rows if r["label"] == 1]
    alarms = [r["probability"] for r in rows if r["label"] == 0]
    assert missed == sorted(missed) and alarms == sorted(alarms, reverse=True)
    expected = int(((version_dir.p >= 0.5) != (version_dir.y == 1)).sum())
    assert len(rows) == expected


def test_gallery_says_when_a_test_image_is_not_on_this_machine(version_dir):
    ev = evaluation_view.load_evaluation(version_dir.registry, "v1")

    class NeverCalled:
        def screen(self, items):
            raise AssertionError("nothing should be scored")

    entries = evaluation_view.error_gallery(NeverCalled(), evaluation_view.misclassified(ev), limit=3)
    assert len(entries) == 3
    assert all(e.overlay is None and "not available" in e.problem for e in entries)


class RecordingPredictor:
    """Stands in for the predictor where a test only checks which image bytes the gallery found."""

    def __init__(self):
        self.seen = []

    def screen(self, items):
        self.seen.extend(items)
        return [ScreenedImage(name=n, ok=False, error="stub") for n, _ in items]


def test_gallery_resolves_project_relative_paths(version_dir):
    row = {
        "path": "data/sample/Tuberculosis/tb0063.png",
        "member": None,
        "source": "tbx11k",
        "label": 1,
        "probability": 0.1,
    }
    recorder = RecordingPredictor()
    seen = recorder.seen

    entries = evaluation_view.error_gallery(recorder, [row])
    assert seen and seen[0][0] == "tb0063.png" and seen[0][1][:4] == b"\x89PNG"
    assert entries[0].problem == "stub"


def test_compare_rows_and_version_rows(version_dir):
    registry = version_dir.registry
    ev = evaluation_view.load_evaluation(registry, "v1")
    rows = versions_view.compare_rows([ev, ev])
    assert rows[0][""] == "Created" and "v1" in rows[0]
    labels = [r[""] for r in rows]
    assert {"ROC AUC", "Sensitivity", "Specificity", "WHO minimum met"} <= set(labels)
    versions = versions_view.version_rows(registry)
    assert versions[0]["version"] == "v1" and versions[0]["status"] == "not promoted"


def test_fmt_ci():
    assert evaluation_view.fmt_ci(0.91234, [0.8, 0.95]) == "0.912 (95% CI 0.800–0.950)"
    assert evaluation_view.fmt_ci(0.5, [None, None]) == "0.500"
    assert evaluation_view.fmt_ci(None, None) == "n/a"
    assert evaluation_view.fmt_ci(0.9, [0.85, 0.95], percent=True) == "90.0% (95% CI 85.0%–95.0%)"


# ------------------------------------------------------------------------------------ retraining


def test_check_dataset_path(tmp_path):
    assert retrain_view.check_dataset_path("data/sample") == SAMPLE.resolve()
    with pytest.raises(DatasetError, match="There is no dataset at"):
        retrain_view.check_dataset_path(str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="Enter"):
        retrain_view.check_dataset_path("  ")
    note = tmp_path / "notes.txt"
    note.write_text("x")
    with pytest.raises(DatasetError, match="is a file"):
        retrain_view.check_dataset_path(str(note))


def test_job_view_progress():
    training = {
        "id": "j1",
        "state": "running",
        "stage": "train",
        "progress": {
            "stage": "train",
            "epoch": 3,
            "epochs": 10,
            "loss": 0.41,
            "val_auc": 0.88,
            "eta_seconds": 75,
            "elapsed_seconds": 30,
        },
    }
    view = retrain_view.job_view(training)
    assert view["active"] and view["epoch"] == 3 and view["val_auc"] == 0.88
    assert view["eta"] == "1 min 15 s"
    assert 0.1 < view["fraction"] < 0.9
    ingest = retrain_view.job_view(
        {
            "id": "j",
            "state": "running",
            "stage": "ingest",
            "progress": {"stage": "ingest", "done": 5, "total": 10},
        }
    )
    assert ingest["fraction"] == pytest.approx(0.05) and ingest["epoch"] is None
    done = retrain_view.job_view(
        {"id": "j", "state": "succeeded", "stage": "register", "elapsed_seconds": 3725}
    )
    assert done["fraction"] == 1.0 and not done["active"] and done["elapsed"] == "1 h 02 min"
    running = retrain_view.job_view(
        {"id": "j", "state": "running", "stage": "evaluate", "created_ts": 100.0}, now=190.0
    )
    assert running["elapsed"] == "1 min 30 s"
    starting = retrain_view.job_view(
        {"id": "j", "state": "running", "stage": "train", "progress": {"stage": "train"}}
    )
    assert starting["detail"] == "first epoch under way" and starting["epoch"] is None


def test_gate_view_and_history():
    ok = {
        "id": "a",
        "state": "succeeded",
        "created": "2026-01-01T10:00:00+00:00",
        "result": {
            "version": "v2",
            "compared_with": "v1",
            "promoted": False,
            "gate": {"passed": False, "reasons": ["sensitivity 0.80 is below the floor 0.90"]},
        },
    }
    gate = retrain_view.gate_view(ok)
    assert gate["version"] == "v2" and not gate["passed"] and gate["reasons"]
    assert retrain_view.gate_view({"state": "running"}) is None
    rows = retrain_view.history_rows([ok, {"id": "b", "state": "failed", "error": "boom"}])
    assert rows[0]["quality gate"] == "failed" and rows[0]["candidate"] == "v2"
    assert rows[1]["state"] == "failed" and rows[1]["message"] == "boom"


def test_fmt_duration():
    assert retrain_view.fmt_duration(None) == "n/a"
    assert retrain_view.fmt_duration(5.4) == "5 s"
    assert retrain_view.fmt_duration(60) == "1 min 00 s"


def test_gallery_finds_images_recorded_relative_to_the_models_dataset(version_dir):
    row = {
        "path": "Tuberculosis/tb0063.png",
        "member": None,
        "source": "tbx11k",
        "label": 1,
        "probability": 0.1,
    }
    recorder = RecordingPredictor()
    seen = recorder.seen

    evaluation_view.error_gallery(recorder, [row], data_root=str(SAMPLE))
    assert seen and seen[0][1][:4] == b"\x89PNG"
    missing = evaluation_view.error_gallery(recorder, [row], data_root="/nowhere")
    assert "not available" in missing[0].problem
