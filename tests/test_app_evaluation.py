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
    assert not [x for x in at.metric if x.label.startswith(("ROC AUC", "WHO minimum"))]
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
    assert metric(at, "WHO minimum (pooled split, upper bound)") == "met"
    assert not [w for w in at.warning if "cannot show" in w.value or "Figures withheld" in w.value]


def test_no_met_badge_stands_above_an_untrusted_data_warning(dashboard):
    version = dashboard.registry.current_version()
    enlarge_test_split(dashboard.root, version, mixed_sources=False)
    at = open_evaluation()
    assert any("No data source in the test set contains both" in w.value for w in at.warning)
    assert metric(at, "WHO minimum (pooled split)") == "not assessable"
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
    # v-copy is the same candidate registered twice: the page says the test films are the same
    assert any("tested on the same" in s.value for s in at.success)


def test_compare_versions_says_when_the_test_films_differ_and_compares_on_the_shared_ones(dashboard):
    import csv

    version = dashboard.registry.current_version()
    enlarge_test_split(dashboard.root, version)
    enlarge_test_split(dashboard.root, "v-copy")
    path = dashboard.root / "v-copy" / "predictions.csv"
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for i, row in enumerate(rows):  # v-copy saw other films: another path for a third of them
        if i % 3 == 0:
            row["path"] = f"elsewhere/{i}.png"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    at = open_evaluation()
    assert not any("tested on the same" in s.value for s in at.success)
    warning = next(w.value for w in at.warning if "tested on different films" in w.value)
    ev = evaluation_view.load_evaluation(dashboard.registry, version)
    shared_keys = {(r["path"], r["member"] or "") for r in ev.predictions}
    other = evaluation_view.load_evaluation(dashboard.registry, "v-copy")
    n_shared = len(shared_keys & {(r["path"], r["member"] or "") for r in other.predictions})
    assert f"{n_shared} in both" in warning and 0 < n_shared < len(ev.predictions)
    assert any(f"On the {n_shared} films both were tested on" in m.value for m in at.markdown)


def test_the_headline_is_the_new_clinic_estimate_and_the_pooled_split_an_upper_bound(dashboard):
    """With LOSO results, the first figures are the estimate for a new clinic, with CIs over films and the
    seed spread named as such; the pooled split's "met" comes second and is labelled an upper bound."""
    import json
    import shutil

    import numpy as np

    from cxr_core.registry.card import LOSO_FILE

    version = dashboard.registry.current_version()
    enlarge_test_split(dashboard.root, version, who_met=True)
    loso_file = shared.PROJECT_ROOT / "models" / "v20261130-052333" / LOSO_FILE
    shutil.copy(loso_file, dashboard.root / version / LOSO_FILE)
    loso = json.loads(loso_file.read_text())
    at = open_evaluation()
    assert not at.exception

    labels = [m.label for m in at.metric]
    assert labels[0] == "Sensitivity at a new clinic"
    assert labels.index("WHO minimum at a new clinic") < labels.index("WHO minimum (pooled split, upper bound)")
    # pooled over the held-out hospitals, per seed, then averaged: recomputed here from the stored runs
    per_seed = {}
    for run in (r for r in loso["runs"] if r["kind"] == "loso"):
        for cell in run["test"].values():
            tp = round(cell["sensitivity"] * cell["n_tb"])
            counts = per_seed.setdefault(run["seed"], [0, 0])
            counts[0], counts[1] = counts[0] + tp, counts[1] + cell["n_tb"]
    expected = np.mean([tp for tp, _ in per_seed.values()]) / next(iter(per_seed.values()))[1]
    assert metric(at, "Sensitivity at a new clinic") == evaluation_view.fmt_pct(expected)
    seed_sens = [tp / n for tp, n in per_seed.values()]
    # Shenzhen specificity 22.6%, DA 41.9%: the WHO minimum is not met at a new clinic ...
    assert metric(at, "WHO minimum at a new clinic") == "not met"
    # ... although the pooled split says "met", which is labelled the upper bound it is
    assert metric(at, "WHO minimum (pooled split, upper bound)") == "met"
    captions = [c.value for c in at.caption]
    sens_caption = next(c for c in captions if "over films; seed spread" in c)
    assert "95% CI" in sens_caption and f"{min(seed_sens) * 100:.1f}%–{max(seed_sens) * 100:.1f}%" in sens_caption
    assert any("It is not a confidence interval" in c for c in captions)
    hospitals = next(t.value for t in at.table if t.value.index.name == "hospital left out")
    assert sorted(hospitals.index) == sorted(loso["two_class_sources"])
    assert all("95% CI" in cell for cell in hospitals["sensitivity (95% CI)"])


def test_per_source_rows_carry_cis_and_a_small_n_notice(dashboard):
    import json

    version = dashboard.registry.current_version()
    enlarge_test_split(dashboard.root, version)
    folder = dashboard.root / version
    report = json.loads((folder / "metrics.json").read_text())
    report["per_source"] = {
        "big": {"n": 200, "n_positive": 100, "roc_auc": 0.9, "roc_auc_ci": [0.85, 0.94], "sensitivity": 0.9,
                "sensitivity_ci": [0.83, 0.95], "specificity": 0.8, "specificity_ci": [0.71, 0.87]},
        "da": {"n": 24, "n_positive": 12, "roc_auc": 0.85, "roc_auc_ci": [0.65, 1.0], "sensitivity": 0.92,
               "sensitivity_ci": [0.65, 0.99], "specificity": 0.58, "specificity_ci": [0.32, 0.81]},
    }  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(report))
    at = open_evaluation()
    table = next(t.value for t in at.table if t.value.index.name == "source")
    assert table.loc["da", "sensitivity (95% CI)"] == "91.7% (95% CI 65.0%–99.0%)".replace("91.7", "92.0")
    assert table.loc["da", "notice"].startswith("small: 24 films (12 TB)")
    assert table.loc["big", "notice"] == ""


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


def test_a_version_without_its_metrics_file_shows_the_summary_kept_at_registration(dashboard):
    """The shipped version with metrics.json gone: the page falls back to the summary its registration
    kept (the figures the quality gate read, the strip and framing shares among them) and says so."""
    import json
    import shutil
    from pathlib import Path

    from cxr_core.pipeline.run import summarise

    project_models = Path(__file__).resolve().parent.parent / "models"
    shipped = json.loads((project_models / "current.json").read_text())["version"]
    shutil.copytree(project_models / shipped, dashboard.root / shipped)
    report = json.loads((dashboard.root / shipped / "metrics.json").read_text())
    (dashboard.root / shipped / "metrics.json").unlink()
    ev = evaluation_view.load_evaluation(dashboard.registry, shipped)
    assert ev.metrics == json.loads((dashboard.root / shipped / "metadata.json").read_text())["metrics"]
    assert ev.metrics["strips_and_markers"] == summarise(report)["strips_and_markers"]  # shares, no counts
    flipped = report["strips_and_markers"]["flipped"]
    assert evaluation_view.robustness_summary(ev).startswith(
        f"With a strip of 5–15 % of the height added on one edge (dark or bright) and a text marker burnt in, "
        f"{flipped} of {report['strips_and_markers']['films']} test decisions changed"
    )
    at = open_evaluation()
    at.selectbox(key="eval_version").set_value(shipped).run()
    assert not at.exception, at.exception
    assert any("metrics.json is missing" in element.value for element in [*at.info, *at.warning, *at.caption])


SHIPPED_WITH_EVIDENCE = "v20261202-065311"  # the first version evaluated with the evidence measures


def test_where_the_evidence_lies_tab_shows_the_measures_and_the_radiologists_boxes(dashboard, shared_cxr):
    """The shipped version copied into the page's registry: its held-out and test-split evidence tables,
    the lesion test sentence, the shortcut audit and test films drawn with the radiologists' boxes."""
    import shutil
    from pathlib import Path

    import numpy as np

    from cxr_core.modelling.predictor import Predictor

    project_models = Path(__file__).resolve().parent.parent / "models"
    shutil.copytree(project_models / SHIPPED_WITH_EVIDENCE, dashboard.root / SHIPPED_WITH_EVIDENCE)
    ev = evaluation_view.load_evaluation(dashboard.registry, SHIPPED_WITH_EVIDENCE)
    rows = evaluation_view.evidence_rows(ev)
    tb_all = next(r for r in rows if r["source"] == "all sources" and r["class"] == "Tuberculosis")
    assert tb_all["films"] == ev.metrics["evidence_where"]["all/Tuberculosis"]["films"] > 300
    assert {r["held-out hospital"] for r in evaluation_view.held_out_evidence_rows(ev)} == {"da", "rahmandb", "shenzhen"}
    assert "lesion test set" in evaluation_view.lesion_summary(ev)

    at = open_evaluation()
    at.selectbox(key="eval_version").set_value(SHIPPED_WITH_EVIDENCE).run()
    assert not at.exception, at.exception
    texts = " ".join(md.value for md in at.markdown)
    assert "At hospitals the recipe never saw" in texts and "radiologists' boxes" in texts
    assert evaluation_view.lesion_summary(ev) in texts and evaluation_view.robustness_summary(ev) in texts
    frames = [df.value for df in at.dataframe]
    assert any("TB films: peak inside the lungs" in frame.columns for frame in frames)
    assert any("ROC AUC, shortcut audit" in frame.columns for frame in frames)

    entries = evaluation_view.lesion_gallery(Predictor(dashboard.root / SHIPPED_WITH_EVIDENCE), ev, limit=3)
    assert len(entries) == 3
    for entry in entries:
        assert entry.overlay is not None and entry.image.ndim == 3
        white = np.all(entry.image == 255, axis=-1)  # the boxes are drawn in pure white on the film
        assert white.sum() > 50, entry.name


def test_lesion_boxes_follow_the_data_to_a_dataset_root_and_their_absence_is_said(dashboard, shared_cxr, monkeypatch):
    """Deployed where the training data is not at the recorded path, the page finds it under a configured
    dataset root (the boxes are drawn), and where it is nowhere it says so instead of dropping the gallery."""
    import json
    import os
    import shutil
    from pathlib import Path

    from cxr_core.modelling.predictor import Predictor

    project_models = Path(__file__).resolve().parent.parent / "models"
    shutil.copytree(project_models / SHIPPED_WITH_EVIDENCE, dashboard.root / SHIPPED_WITH_EVIDENCE)
    metadata_file = dashboard.root / SHIPPED_WITH_EVIDENCE / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    recorded = f"/mnt/retired-disk/{shared_cxr.parent.name}/{shared_cxr.name}"  # where another machine kept it
    metadata["data_path"] = recorded
    metadata_file.write_text(json.dumps(metadata))
    # the operator's mount holds the same trailing folders (here: the shared data's own parent)
    monkeypatch.setenv("CXR_DATASET_ROOTS", f"{shared_cxr.parent.parent}{os.pathsep}{dashboard.root.parent / 'up'}")
    ev = evaluation_view.load_evaluation(dashboard.registry, SHIPPED_WITH_EVIDENCE)
    found = evaluation_view.training_data_folder(ev)
    assert found == str(shared_cxr.parent.parent / shared_cxr.parent.name / shared_cxr.name)
    assert evaluation_view.missing_lesion_boxes(ev, found) is None
    entries = evaluation_view.lesion_gallery(Predictor(dashboard.root / SHIPPED_WITH_EVIDENCE), ev, limit=2)
    assert len(entries) == 2 and all(entry.overlay is not None for entry in entries)

    monkeypatch.setenv("CXR_DATASET_ROOTS", str(dashboard.root.parent / "empty-root"))
    assert evaluation_view.training_data_folder(ev) is None
    message = evaluation_view.missing_lesion_boxes(ev, None)
    assert recorded in message and "empty-root" in message and "CXR_DATASET_ROOTS" in message
    at = open_evaluation()
    at.selectbox(key="eval_version").set_value(SHIPPED_WITH_EVIDENCE).run()
    assert not at.exception, at.exception
    assert message in [info.value for info in at.info]
    assert not any("Test films with radiologists' boxes" in md.value for md in at.markdown)
