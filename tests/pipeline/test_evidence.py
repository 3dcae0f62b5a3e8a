"""Where the evidence lies: the measures, the lesion test set, the evidence loss and the view's edges.

Real code paths throughout: real TensorFlow training, real ingest of real shared films with the
radiologists' real boxes, the shipped lung model.
"""

import csv
import hashlib
import json
import shutil

import numpy as np
import pytest

from cxr_core import settings
from cxr_core.modelling.evidence import film_evidence, lungs_in_view, summarise_evidence
from cxr_core.pipeline.ingest import (
    LESION_TEST_FRACTION,
    hold_out_lesion_films,
    lesion_masks,
    load_extras,
    load_split,
    run_ingest,
)
from cxr_core.pipeline.loso import holdout_split, load_ingested, within_source_split
from cxr_core.settings import Layout
from tests.conftest import shared_records


def _held_out_by_hash(md5: str) -> bool:
    return int(hashlib.sha256(md5.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < LESION_TEST_FRACTION


def test_film_evidence_measures_lungs_lesions_and_the_peak():
    side = 64
    lungs = np.zeros((side, side), np.uint8)
    lungs[8:56, 8:56] = 255
    lesions = np.zeros((side, side), np.uint8)
    lesions[16:32, 16:32] = 1
    uniform = film_evidence(np.ones((8, 8), np.float32), lungs, lesions)
    assert uniform["lesion_share"] == pytest.approx(uniform["uniform_share"], abs=1e-6)
    assert uniform["lung_share"] == pytest.approx((48 * 48) / (64 * 64), abs=1e-6)
    on_lesion = np.zeros((8, 8), np.float32)
    on_lesion[3, 3] = 1.0  # cell (3, 3) covers pixels 24-31: inside the box
    found = film_evidence(on_lesion, lungs, lesions)
    assert found["pointing"] is True and found["peak_in_lungs"] is True
    assert found["lesion_share"] > 3 * found["uniform_share"]
    corner = np.zeros((8, 8), np.float32)
    corner[0, 7] = 1.0
    found = film_evidence(corner, lungs, lesions)
    assert found["pointing"] is False and found["peak_in_lungs"] is False and found["lung_share"] < 0.5
    blank = film_evidence(np.zeros((8, 8), np.float32), lungs, lesions)
    assert blank["lung_share"] is None and blank["pointing"] is None
    summary = summarise_evidence([found, film_evidence(on_lesion, lungs, lesions), blank])
    assert summary["films"] == 3 and summary["pointing"] == 0.5 and summary["pointing_n"] == 2


def test_lungs_grow_by_five_percent_of_the_films_longer_side():
    region = np.zeros((400, 400), np.uint8)
    region[100:300, 100:300] = 255
    lungs, grown = lungs_in_view(region, film_longer_side=800, side=100)
    # 5 % of 800 px = 40 film px = 10 view px (the view shows 400 film px in 100)
    assert (lungs > 0).sum() == 50 * 50
    rows = np.flatnonzero(grown[:, 50] > 0)
    assert rows.min() == 15 and rows.max() == 84


def test_the_lesion_test_set_is_fixed_by_content_not_by_seed():
    rows = [{"group": i, "md5": hashlib.md5(str(i).encode()).hexdigest(), "split": "train",
             "lesions": "[[1, 1, 5, 5]]" if i % 2 else ""} for i in range(2000)]  # fmt: skip
    held = hold_out_lesion_films(rows)
    chosen = {row["group"] for row in rows if row.get("lesion_test") == 1}
    assert held == len(chosen) and all(group % 2 for group in chosen)  # only films with boxes
    assert 0.17 < held / 1000 < 0.23
    assert all(row["split"] == "test" for row in rows if row.get("lesion_test") == 1)
    again = [{**row, "split": "val", "lesion_test": 0} for row in rows]
    hold_out_lesion_films(again)
    assert {row["group"] for row in again if row.get("lesion_test") == 1} == chosen


@pytest.fixture(scope="module")
def lesion_multisite(tmp_path_factory, shared_cxr):
    """Real films of three two-class sources, and TBX11K TB films with their real lesion boxes: half of
    them in the fixed lesion test set, half not (chosen from the shared manifest's md5)."""
    root = tmp_path_factory.mktemp("lesion-multisite")
    picked = []
    for source in ("shenzhen", "da", "rahmandb"):
        for label in ("Normal", "Tuberculosis"):
            picked += shared_records(source, label)[:8]
    with open(shared_cxr / "lesions.csv", newline="") as handle:
        boxes = list(csv.DictReader(handle))
    boxed = {row["path"] for row in boxes}
    tbx = [row for row in shared_records("tbx11k", "Tuberculosis") if row["path"] in boxed]
    held = [row for row in tbx if _held_out_by_hash(row["md5"])][:6]
    kept = [row for row in tbx if not _held_out_by_hash(row["md5"])][:10]
    picked += held + kept + shared_records("openist", "Normal")[:10]
    names = {}
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "source"])
        for row in picked:
            names[row["path"]] = row["path"].replace("/", "_")
            shutil.copy(shared_cxr / row["path"], root / names[row["path"]])
            writer.writerow([names[row["path"]], row["label"], row["source"]])
    with open(root / "lesions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "kind", "xmin", "ymin", "xmax", "ymax"])
        writer.writeheader()
        for row in boxes:
            if row["path"] in names:
                writer.writerow({**row, "path": names[row["path"]]})
    return {"root": root, "held": {names[r["path"]] for r in held}, "kept": {names[r["path"]] for r in kept}}


def _ingest(lesion_multisite, tmp_path_factory, seed):
    out = tmp_path_factory.mktemp(f"ingest-{seed}") / "ingest"
    run_ingest(lesion_multisite["root"], out, {"val_fraction": 0.25, "test_fraction": 0.25, "seed": seed})
    return out


def test_lesion_test_films_never_reach_training_in_any_split_or_fold(lesion_multisite, tmp_path_factory):
    from pathlib import Path

    for seed in (1, 2):
        ingest = _ingest(lesion_multisite, tmp_path_factory, seed)
        summary = json.loads((ingest / Layout.SUMMARY).read_text())
        assert summary["lesion_films"] == 16 and summary["lesion_test_films"] == 6
        images, labels, rows = load_ingested(ingest)
        held = {i for i, row in enumerate(rows) if row["lesion_test"] == "1"}
        assert {Path(rows[i]["path"]).name for i in held} == lesion_multisite["held"]
        assert all(rows[i]["split"] == "test" for i in held)
        for split in ("train", "val"):  # what run_train reads
            _, _, split_rows = load_split(ingest, split)
            assert not {Path(row["path"]).name for row in split_rows} & lesion_multisite["held"]
        for holdout in ("da", "rahmandb", "shenzhen"):  # what every LOSO fold trains on
            fold = holdout_split(rows, holdout)
            assert not held & set(fold["train"].tolist()) and not held & set(fold["val"].tolist())
        pooled = within_source_split(rows, ["da", "rahmandb", "shenzhen"])
        assert not held & set(pooled["train"].tolist()) and not held & set(pooled["val"].tolist())
        # the boxes are in the view's frame and land on the films they belong to
        masks = lesion_masks(rows, images.shape[1])
        boxed = {Path(rows[i]["path"]).name for i in range(len(rows)) if masks[i].any()}
        assert boxed == lesion_multisite["held"] | lesion_multisite["kept"]
        extras = load_extras(ingest, rows)
        assert extras["available"] and extras["thumbs"].shape == (len(rows), 16 * 16 + 5)
        lung_px = (extras["masks"][..., 0] > 0).mean(axis=(1, 2))
        grown_px = (extras["masks"][..., 1] > 0).mean(axis=(1, 2))
        assert lung_px.min() > 0.05 and np.median(lung_px) > 0.2 and np.all(grown_px >= lung_px)


def _synthetic_films(n: int, seed: int):
    """64 px films whose TB sign is a blob inside the 'lungs', and a corner marker outside them on most TB
    films and few normals: a shortcut the evidence loss must talk the network out of.

    The blob is bright enough (+45 over noise of sd 25) that a network reading it beats the marker's own
    AUC (0.8) on the validation films by a clear margin: with a fainter blob (+30) both came out near
    0.8, and early stopping could restore an epoch-0 network whose map had not moved yet (CI, 2026-12-03).
    """
    rng = np.random.default_rng(seed)
    side = 64
    images = rng.normal(100, 25, (n, side, side)).clip(0, 255)
    labels = np.arange(n) % 2
    lungs = np.zeros((side, side), np.uint8)
    lungs[14:54, 10:54] = 255
    for i in range(n):
        if labels[i]:
            y, x = rng.integers(20, 44), rng.integers(16, 44)
            images[i, y - 4 : y + 4, x - 4 : x + 4] += 45
        if rng.random() < (0.8 if labels[i] else 0.2):
            images[i, 2:10, 2:10] = 250
    targets = np.zeros((n, side, side, 2), np.uint8)
    targets[..., 0] = lungs
    return images.astype(np.uint8)[..., None], labels.astype(np.int32), targets, lungs


@pytest.mark.slow
def test_the_evidence_loss_moves_the_map_off_a_shortcut_and_into_the_lungs():
    from cxr_core.modelling.gradcam import GradCam
    from cxr_core.pipeline.train import fit_network

    x, y, targets, lungs = _synthetic_films(192, seed=0)
    x_val, y_val, targets_val, _ = _synthetic_films(64, seed=1)
    params = settings.with_recipe({}, "cam-evidence")
    params.update(epochs=12, patience=12, seed=0, batch_size=32)
    params["model"]["filters"] = [8, 16, 16, 16]
    params["augment"].update(rotation=0.0, zoom_in=0.0, zoom_out=0.0, translation=0.0)
    sources = ["synthetic"] * len(y)
    shares = {}
    for name, weight in (("plain", 0.0), ("guided", 1.0)):
        params["evidence"] = {"lung_weight": weight, "lesion_weight": 0.0}
        model, _ = fit_network(x, y, sources, x_val, y_val, params, targets_train=targets, targets_val=targets_val)
        cams = GradCam(model)(x_val[y_val == 1])
        # a blank map (no positive evidence anywhere) shows a clinician nothing in the lungs: share 0
        shares[name] = float(np.mean([film_evidence(raw, lungs)["lung_share"] or 0.0 for raw in cams.raw]))
    assert shares["guided"] >= 0.8, shares
    assert shares["guided"] > shares["plain"] + 0.1, shares


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


@pytest.mark.slow
def test_the_marker_consistency_loss_makes_a_marker_training_never_drew_move_the_score_less():
    """Two networks of the same seed and films, markers printed on half the films, one also trained to
    score each film alike with another marker (train.augment.marker_consistency): on validation films with
    a word and a font the training never draws, its logits move less, in units of their own spread. Its
    trainer's third output is the gap between the serving network's two logits, zero for a film shown twice
    even in training (before dropout)."""
    import cv2

    from cxr_core.pipeline.train import CONSISTENCY, compiled_trainer, fit_network

    x, y, targets, _ = _synthetic_films(192, seed=0)
    x[:, 2:10, 2:10] = 100  # no corner shortcut: only the printed markers are there to be ignored
    x_val, y_val, targets_val, _ = _synthetic_films(64, seed=1)
    x_val[:, 2:10, 2:10] = 100
    marked = x_val.copy()
    for i in range(len(marked)):
        cv2.putText(marked[i, ..., 0], "ICU", (6 + i % 20, 20 + i % 30), cv2.FONT_HERSHEY_TRIPLEX, 0.5, 255, 1)
    params = settings.with_recipe({}, "cam-evidence-markers-consistent")
    params.update(epochs=10, patience=10, seed=0, batch_size=32)
    params["model"]["filters"] = [8, 16, 16, 16]
    params["augment"].update(rotation=0.0, zoom_in=0.0, zoom_out=0.0, translation=0.0, markers=0.5)
    params["evidence"] = {"lung_weight": 1.0, "lesion_weight": 0.0}
    gaps = {}
    for weight in (0.0, 4.0):  # a strong weight: the test is of what the loss does, not of the recipe's 1.0
        params["augment"]["marker_consistency"] = weight
        sources = ["synthetic"] * len(y)
        model, history = fit_network(x, y, sources, x_val, y_val, params, targets_train=targets, targets_val=targets_val)
        assert (CONSISTENCY + "_loss" in history.history) == (weight > 0)
        assert len(model.inputs) == 1 and model.output_shape == (None, 1)  # the serving network, always
        before = _logit(model.predict(x_val, verbose=0)[:, 0])
        after = _logit(model.predict(marked, verbose=0)[:, 0])
        # in units of the logits' own spread over the validation films: a network that squeezed every
        # logit together would otherwise look robust while its decisions moved as much as before
        gaps[weight] = float(np.mean(np.abs(before - after)) / np.std(before))
    assert gaps[4.0] < 0.5 * gaps[0.0], gaps

    # the trainer's third output is the served logits' gap; in training, with dropout on, it stays the
    # marker's alone: a film shown twice has no gap
    model, trainer, _ = compiled_trainer(64, params, steps=1, guided=True)
    outputs = trainer.predict({"film": x_val[:8], "other_view": marked[:8]}, verbose=0)
    expected = _logit(model.predict(x_val[:8], verbose=0)[:, 0]) - _logit(model.predict(marked[:8], verbose=0)[:, 0])
    np.testing.assert_allclose(outputs[CONSISTENCY], expected, atol=1e-3)
    np.testing.assert_allclose(outputs["tb_probability"], model.predict(x_val[:8], verbose=0), atol=1e-5)
    twice = {"film": x_val[:8].astype("float32"), "other_view": x_val[:8].astype("float32")}
    in_training = trainer(twice, training=True)
    np.testing.assert_allclose(in_training[CONSISTENCY].numpy(), 0.0, atol=1e-4)


def test_the_cam_networks_gradcam_is_its_class_activation_map():
    import tensorflow as tf

    from cxr_core.modelling.gradcam import GradCam
    from cxr_core.modelling.networks import OUTPUT, build_cam_model, feature_layer_name

    model = build_cam_model(64, filters=(8, 16, 16), pools=2)
    x = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 1)).astype(np.float32)
    raw = GradCam(model)(x).raw
    features = tf.keras.Model(model.input, model.get_layer(feature_layer_name(model)).output)(x).numpy()
    cam = np.maximum(np.einsum("bhwc,c->bhw", features, model.get_layer(OUTPUT).kernel.numpy()[:, 0]), 0)
    cells = features.shape[1] * features.shape[2]
    np.testing.assert_allclose(raw, cam / cells, rtol=1e-4, atol=1e-7)


def test_the_shortcut_audit_reads_a_framing_cue_and_not_noise(tmp_path, lesion_multisite):
    """On real ingested films: the audit's features (whole-film thumbnail + intensity statistics) separate
    a source with a built-in framing cue, and stay near chance where the label is unrelated to them."""
    from cxr_core.pipeline.shortcut import auc_or_none, fit_shortcut, shortcut_scores

    ingest = tmp_path / "ingest"
    run_ingest(lesion_multisite["root"], ingest, {"val_fraction": 0.25, "test_fraction": 0.25})
    _, labels, rows = load_ingested(ingest)
    features = load_extras(ingest, rows)["thumbs"]
    # TBX11K (512 px, TB only) against the teaching normals (tight crops): a pure site cue
    cue = np.array([row["source"] in ("tbx11k", "openist") for row in rows])
    site_labels = np.array([row["source"] == "tbx11k" for row in rows])[cue].astype(int)
    model = fit_shortcut(features[cue][::2], site_labels[::2])
    assert auc_or_none(site_labels[1::2], shortcut_scores(model, features[cue][1::2])) >= 0.9
    # a label drawn at random: nothing in the features predicts it
    random_labels = np.random.default_rng(0).integers(0, 2, len(rows))
    model = fit_shortcut(features[::2], random_labels[::2])
    assert abs(auc_or_none(random_labels[1::2], shortcut_scores(model, features[1::2])) - 0.5) < 0.25
