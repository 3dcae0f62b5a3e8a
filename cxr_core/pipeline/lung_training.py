"""Training the lung-field U-Net on the shared masks (Shenzhen, JSRT), and measuring it.

The masks: ``<lungs>/manifest.csv`` pairs each image with its 0/255 mask (same size). Splits are fixed
and seeded per source (70/10/20 by image), so a source's held-out test films never reach training or
early stopping; quality is measured at each input's full original size (the mask mapped back with
:func:`cxr_core.modelling.lungs.mask_to_original`), per source, and across sources (train on one,
test on the other), because a lung model must hold up on hospitals it has not seen.

Licence of the masks: Shenzhen (Stirenko et al. 2018) CC BY-NC-SA 4.0, JSRT/SCR (Shiraishi et al. 2000,
van Ginneken et al. 2006) research use only: a model trained on them is for non-commercial research.
"""

from __future__ import annotations

import time
from collections import Counter

import cv2
import numpy as np

from cxr_core.modelling.lungs import SIDE, build_unet, lung_input, mask_to_frame
from cxr_core.pipeline.lung_extra_data import (
    choose_distillation_films,
    distillation_pairs,
    mask_set_hashes,
    negative_pairs,
)


def load_records(manifest, sources=None):
    """Rows of the lung-mask manifest as dicts with absolute ``image_path``/``mask_path``."""
    import csv
    import os

    root = os.path.dirname(os.path.abspath(manifest))
    out = []
    with open(manifest, newline="") as fh:
        for row in csv.DictReader(fh):
            if sources and row["source"] not in sources:
                continue
            row = dict(row)
            row["image_path"] = os.path.normpath(os.path.join(root, row["image"]))
            row["mask_path"] = os.path.normpath(os.path.join(root, row["mask"]))
            out.append(row)
    return out


def split_records(records, seed: int = 0, fractions=(0.7, 0.1, 0.2)):
    """Fixed seeded split by image, per source: {'train': [...], 'val': [...], 'test': [...]}."""
    out = {"train": [], "val": [], "test": []}
    for source in sorted({r["source"] for r in records}):
        rows = sorted((r for r in records if r["source"] == source), key=lambda r: r["image"])
        idx = np.random.default_rng(seed).permutation(len(rows))
        n_train = round(fractions[0] * len(rows))
        n_val = round(fractions[1] * len(rows))
        if len(rows) >= 3:  # a tiny set still gets a film to stop on and one to measure
            n_val = max(1, n_val)
            n_train = min(n_train, len(rows) - n_val - 1)
        for k, i in enumerate(idx):
            part = "train" if k < n_train else "val" if k < n_train + n_val else "test"
            out[part].append(rows[i])
    return out


def prepare_pairs(records, side: int = SIDE, mode: str = "letterbox", soft: bool = False):
    """Decode each record with the project's reader -> (X uint8 (n,side,side,1), Y float32 (n,side,side,1)).

    ``soft``: each target pixel is the share of it that is lung (see :func:`mask_to_frame`)."""
    from cxr_core.imaging.decode import read_image

    X = np.zeros((len(records), side, side, 1), np.uint8)
    Y = np.zeros((len(records), side, side, 1), np.float32)
    for i, r in enumerate(records):
        gray = read_image(r["image_path"]).pixels
        X[i, :, :, 0], frame = lung_input(gray, side, mode)
        Y[i, :, :, 0] = mask_to_frame(read_mask(r["mask_path"], gray.shape), frame, soft=soft)
    return X, Y


def read_mask(path, shape=None) -> np.ndarray:
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise ValueError(f"cannot read mask {path}")
    if shape is not None and m.shape != tuple(shape):
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return (m > 127).astype(np.uint8) * 255


def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, soft: bool = False):
    """One sample: same small rotation/shift/zoom on image and mask; brightness/contrast/gamma on the image.

    A ``soft`` mask (lung shares) stays soft: interpolated, not rounded."""
    side = x.shape[0]
    angle = rng.uniform(-10, 10)
    zoom = rng.uniform(0.9, 1.1)
    tx, ty = rng.uniform(-0.08, 0.08, size=2) * side
    M = cv2.getRotationMatrix2D((side / 2, side / 2), angle, zoom)
    M[:, 2] += (tx, ty)
    xi = cv2.warpAffine(
        x, M, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    yi = cv2.warpAffine(
        y, M, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    yi = np.clip(yi, 0.0, 1.0) if soft else (yi >= 0.5).astype(np.float32)
    f = xi.astype(np.float32) / 255.0
    f = np.power(f, rng.uniform(0.7, 1.4))  # gamma
    f = (f - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.1, 0.1)  # contrast, brightness
    if rng.random() < 0.3:
        f = cv2.GaussianBlur(f, (3, 3), rng.uniform(0.3, 1.0))
    xi = np.clip(f * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return xi, yi


def dice_bce_loss(y_true, y_pred):
    from keras import ops

    eps = 1e-6
    y_pred = ops.clip(y_pred, eps, 1 - eps)
    bce = -ops.mean(y_true * ops.log(y_pred) + (1 - y_true) * ops.log(1 - y_pred))
    inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    denom = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3))
    soft_dice = ops.mean((2 * inter + 1.0) / (denom + 1.0))
    return bce + (1 - soft_dice)


def _dice_metric(y_true, y_pred):
    from keras import ops

    p = ops.cast(y_pred >= 0.5, "float32")
    inter = ops.sum(y_true * p, axis=(1, 2, 3))
    denom = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(p, axis=(1, 2, 3))
    return ops.mean((2 * inter + 1.0) / (denom + 1.0))


def train_unet(
    records,
    out_path,
    side: int = SIDE,
    epochs: int = 60,
    seed: int = 0,
    val_records=None,
    batch_size: int = 16,
    base_filters: int = 8,
    depth: int = 4,
    architecture: str = "unet",
    soft_targets: bool = False,
    lr: float = 2e-3,
    patience: int = 10,
    mode: str = "letterbox",
    max_minutes: float | None = None,
    verbose: int = 2,
    data=None,
    negatives: float = 0.0,
    extra_train=None,
):
    """Train the U-Net on ``records`` (lung-manifest rows), early-stopping on ``val_records``.

    If ``val_records`` is None a seeded 12.5 % of ``records`` is held out. ``data`` may pass
    pre-decoded ((Xtr, Ytr), (Xva, Yva)) arrays. ``negatives``: synthetic no-lung pictures with empty
    masks added to training and validation, as a share of each (see :func:`synthetic_negative`).
    ``extra_train``: (X, Y) added to training only (the teacher's masks of :func:`distillation_pairs`),
    so that early stopping still watches the radiologists' masks. Saves the best-val model to
    ``out_path`` and returns a dict with history, params and wall time.
    """
    import keras

    keras.utils.set_random_seed(seed)
    if data is None:
        if val_records is None:
            idx = np.random.default_rng(seed).permutation(len(records))
            n_val = max(1, len(records) // 8)
            val_records = [records[i] for i in idx[:n_val]]
            records = [records[i] for i in idx[n_val:]]
        Xtr, Ytr = prepare_pairs(records, side, mode, soft_targets)
        Xva, Yva = prepare_pairs(val_records, side, mode, soft_targets)
    else:
        (Xtr, Ytr), (Xva, Yva) = data
    if negatives > 0:  # validation gets its share too, so early stopping also watches "nothing here"
        Xn, Yn = negative_pairs(max(1, round(negatives * len(Xtr))), side, mode, seed)
        Xtr, Ytr = np.concatenate([Xtr, Xn]), np.concatenate([Ytr, Yn])
        Xn, Yn = negative_pairs(max(1, round(negatives * len(Xva))), side, mode, seed + 1000)
        Xva, Yva = np.concatenate([Xva, Xn]), np.concatenate([Yva, Yn])
    if extra_train is not None and len(extra_train[0]):
        Xtr, Ytr = np.concatenate([Xtr, extra_train[0]]), np.concatenate([Ytr, extra_train[1]])

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(Xtr))

        def __len__(self):
            return max(1, int(np.ceil(len(Xtr) / batch_size)))

        def __getitem__(self, i):
            sel = self.order[i * batch_size : (i + 1) * batch_size]
            xb = np.empty((len(sel), side, side, 1), np.uint8)
            yb = np.empty((len(sel), side, side, 1), np.float32)
            for k, j in enumerate(sel):
                xa, ya = augment(Xtr[j, :, :, 0], Ytr[j, :, :, 0], self.rng, soft_targets)
                xb[k, :, :, 0], yb[k, :, :, 0] = xa, ya
            return xb, yb

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(Xtr))

    class TimeLimit(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            if max_minutes and time.time() - self.t0 > 60 * max_minutes:
                self.model.stop_training = True

    model = build_unet(side, base_filters, depth, architecture=architecture)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=dice_bce_loss, metrics=[_dice_metric])
    callbacks = [
        keras.callbacks.EarlyStopping("val_loss", patience=patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(
            "val_loss", factor=0.5, patience=max(2, patience // 3), min_lr=1e-5
        ),
        TimeLimit(),
    ]
    t0 = time.time()
    hist = model.fit(
        Batches(), validation_data=(Xva, Yva), epochs=epochs, callbacks=callbacks, verbose=verbose
    )
    seconds = time.time() - t0
    from cxr_core.modelling.networks import save_model

    save_model(model, out_path)
    return {
        "seconds": seconds,
        "epochs_run": len(hist.history["loss"]),
        "best_val_loss": float(min(hist.history["val_loss"])),
        "params": int(model.count_params()),
        "train_films": len(Xtr),  # negatives and distilled films included
        "val_films": len(Xva),
        "history": {k: [float(v) for v in vals] for k, vals in hist.history.items()},
        "model": model,
    }


def evaluate_lungs(model, records, side: int = SIDE, mode: str = "letterbox") -> dict:
    """Dice and IoU per source, each film scored at its own full size (mask mapped back), mean and 5th pct."""
    from cxr_core.imaging.decode import read_image
    from cxr_core.modelling.lungs import dice, iou, segment

    by_source: dict[str, dict[str, list[float]]] = {}
    for record in records:
        gray = read_image(record["image_path"]).pixels
        predicted = segment(model, gray, side, mode)["mask"]
        truth = read_mask(record["mask_path"], gray.shape)
        scores = by_source.setdefault(record["source"], {"dice": [], "iou": []})
        scores["dice"].append(dice(predicted, truth))
        scores["iou"].append(iou(predicted, truth))
    return {
        source: {"films": len(values["dice"]),
                 **{f"{name}_mean": round(float(np.mean(v)), 4) for name, v in values.items()},
                 **{f"{name}_p5": round(float(np.percentile(v, 5)), 4) for name, v in values.items()}}
        for source, values in sorted(by_source.items())
    }  # fmt: skip


def run_lung_train(data_root, out_dir, params: dict | None = None, progress=None, census_data=None) -> dict:
    """Train on the train splits of every source, measure on the held-out splits, write a model folder.

    With ``cross_source``, one more model per source is trained on the *other* source only and tested
    on all of this one: the estimate for a hospital the lung model never saw. With ``census_data`` (a
    labelled X-ray dataset) the served model is also tried on the non-chest probes and on every film
    of it (:func:`cxr_core.pipeline.lung_census.lung_census`): what the lung gate judges besides Dice.
    """
    import os
    from datetime import UTC, datetime
    from pathlib import Path

    from cxr_core import settings
    from cxr_core.errors import DatasetError
    from cxr_core.fsutil import atomic_directory, write_json_atomic
    from cxr_core.modelling.runtime import write_lung_tflite
    from cxr_core.pipeline.datasets import Record, dataset_fingerprint
    from cxr_core.registry.store import sha256_file
    from cxr_core.settings import Layout

    params = settings.section("lungs", params)
    data_root = Path(data_root)
    records = load_records(data_root / "manifest.csv")
    if not records:
        raise DatasetError(f"no lung masks listed in {data_root.name}/manifest.csv")
    splits = split_records(records, seed=int(params["split_seed"]))
    common = {key: params[key] for key in ("side", "epochs", "batch_size", "base_filters", "depth", "patience",
                                           "mode", "max_minutes", "architecture",
                                           "soft_targets", "negatives")}  # fmt: skip
    common["lr"] = params["learning_rate"]
    started = time.perf_counter()
    taught, teacher = None, None
    if int(params["distill_films"]) > 0:
        from cxr_core.errors import ModelError
        from cxr_core.modelling.lungs import load_lung_model

        if not params["distill_data"]:
            raise DatasetError("lungs.distill_films needs lungs.distill_data: a labelled X-ray dataset")
        teacher = load_lung_model()
        if teacher is None:
            raise ModelError("distillation needs a current lung model to learn from and there is none: "
                             "promote one (models promote VERSION --lungs) or set lungs.distill_films=0")  # fmt: skip
        chosen = choose_distillation_films(params["distill_data"], int(params["distill_films"]),
                                           int(params["split_seed"]), records)  # fmt: skip
        taught = distillation_pairs(teacher, chosen, int(params["side"]), params["mode"], bool(params["soft_targets"]))
        if not taught.kept:
            raise DatasetError(f"none of the {len(chosen)} films chosen from {Path(params['distill_data']).name} "
                               f"could teach the lung model ({len(taught.teacher_refused)} without lungs for the "
                               f"teacher, {len(taught.unreadable)} unreadable)")  # fmt: skip
    with atomic_directory(out_dir) as staging:
        trained = train_unet(splits["train"], str(staging / Layout.MODEL), seed=int(params["seed"]),
                             val_records=splits["val"], verbose=0,
                             extra_train=(taught.X, taught.Y) if taught else None, **common)  # fmt: skip
        model = trained.pop("model")
        held_out = evaluate_lungs(model, splits["test"], params["side"], params["mode"])
        cross = {}
        if params["cross_source"]:
            sources = sorted({r["source"] for r in records})
            for target in sources:
                others = [r for r in splits["train"] if r["source"] != target]
                others_val = [r for r in splits["val"] if r["source"] != target]
                if not others:
                    continue
                twin = train_unet(others, str(staging / f".cross-{target}.keras"), seed=int(params["seed"]),
                                  val_records=others_val, verbose=0, **common)  # fmt: skip
                cross[target] = evaluate_lungs(
                    twin["model"],
                    [r for r in records if r["source"] == target],
                    params["side"],
                    params["mode"],
                )[target]
                (staging / f".cross-{target}.keras").unlink(missing_ok=True)
        fingerprint = dataset_fingerprint([Record(r["mask_path"], 1, r["source"]) for r in records])
        metadata = {
            "version": None,
            "kind": "lung segmentation",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": params["mode"],
            "input_side": params["side"],
            "params": params,
            "parameters": trained["params"],
            "epochs_run": trained["epochs_run"],
            "train_seconds": round(time.perf_counter() - started, 1),
            "data_name": data_root.name,
            "data_fingerprint": fingerprint,
            "split": {part: len(rows) for part, rows in splits.items()},
            "held_out_images": sorted(r["image"] for r in splits["test"]),  # what held_out was measured on
            "held_out": held_out,
            "cross_source": cross,  # the twins are trained on masks only, never distilled
            "train_films": trained["train_films"],  # the masks' training split, distilled films included
            "distilled": {"teacher": teacher.version, "teacher_sha256": teacher.sha256,
                          "teacher_runtime": teacher.runtime, "teacher_tflite_sha256": teacher.metadata.get("tflite_sha256"),
                          "data_name": Path(params["distill_data"]).name, "asked": int(params["distill_films"]),
                          "films": len(taught.kept), "teacher_refused": taught.teacher_refused,
                          "unreadable": taught.unreadable,
                          "by_source": dict(sorted(Counter(r.source for r in taught.kept).items())),
                          "paths": sorted(os.path.relpath(r.display_path, params["distill_data"]) for r in taught.kept),
                          } if taught else None,  # fmt: skip
            "licence": LICENCE,
            "model_sha256": sha256_file(staging / Layout.MODEL),
            # what serving runs (LungModel): the same network converted here, once, from model.keras
            "tflite_sha256": write_lung_tflite(staging),
        }
        metadata["tflite_model_sha256"] = metadata["model_sha256"]  # the weights the twin was made from
        write_json_atomic(staging / Layout.METADATA, metadata)
        if census_data is not None:  # served as the clinic would serve it: the folder as it stands
            from cxr_core.modelling.lungs import LungModel
            from cxr_core.pipeline.lung_census import lung_census

            trained_on = mask_set_hashes(splits["train"] + splits["val"]) | (taught.hashes if taught else set())
            metadata["census"] = lung_census(LungModel(staging), census_data, trained_on=trained_on)
            write_json_atomic(staging / Layout.METADATA, metadata)
        write_json_atomic(staging / Layout.HISTORY_JSON, trained["history"])
        (staging / Layout.CARD).write_text(render_lung_card(metadata))
    return metadata


LICENCE = (
    "Trained on the Shenzhen lung masks (Stirenko et al. 2018, CC BY-NC-SA 4.0) and the JSRT images "
    "(Shiraishi et al. 2000) with SCR masks (van Ginneken et al. 2006, research use only): this model is "
    "for non-commercial research use, and derived models must carry the same terms."
)


def _kind(metadata: dict) -> str:
    params = metadata.get("params") or {}
    kind = "depthwise-separable U-Net" if params.get("architecture") == "separable" else "U-Net"
    return kind + (", trained on each pixel's lung share" if params.get("soft_targets") else "")


def render_lung_card(metadata: dict) -> str:
    def row(source: str, values: dict) -> str:
        return (f"| {source} | {values['films']} | {values['dice_mean']:.3f} | {values['dice_p5']:.3f} | "
                f"{values['iou_mean']:.3f} |")  # fmt: skip

    lines = [
        f"# Lung model card {metadata.get('version') or '(candidate)'}",
        "",
        f"Compact {_kind(metadata)} ({metadata['parameters']:,} parameters), input {metadata['input_side']} px "
        f"({metadata['mode']}: the whole border-trimmed film, padded to a square), trained "
        f"{metadata['epochs_run']} epochs in {metadata['train_seconds']:.0f} s on `{metadata['data_name']}` "
        f"(fingerprint `{metadata['data_fingerprint'][:16]}`; split per source 70/10/20, seeded: "
        f"{metadata['split']}).",
        "",
        "Used to draw the lung outline, to measure how much of the classifier's evidence lies in the lungs, "
        "and to refuse films with no plausible pair of lung fields."
        + (
            " Served by TFLite from `model.tflite`, converted from `model.keras` when it was trained "
            "(`cxr_core.modelling.runtime`)."
            if metadata.get("tflite_sha256")
            else ""
        ),
        "",
        "## Held-out films (each at its own full size)",
        "",
        "| source | films | Dice | Dice (5th percentile) | IoU |",
        "|---|---|---|---|---|",
        *[row(source, values) for source, values in metadata["held_out"].items()],
    ]
    if metadata.get("cross_source"):
        lines += ["", "## A source it never saw (trained on the other source only)", "",
                  "| source | films | Dice | Dice (5th percentile) | IoU |", "|---|---|---|---|---|",
                  *[row(source, values) for source, values in metadata["cross_source"].items()]]  # fmt: skip
    distilled = metadata.get("distilled") or {}
    if distilled:
        lines += ["", "## Taught by another lung model", "",
                  f"Besides the masks, trained on {distilled['films']} films without masks of "
                  f"`{distilled['data_name']}` ({', '.join(f'{k} {v}' for k, v in distilled['by_source'].items())}) "
                  f"with lung model {distilled['teacher']}'s masks as targets."
                  + (" The twins above are trained on the masks only." if metadata.get("cross_source") else "")
                  + (" The census below leaves those films out." if metadata.get("census") else "")]  # fmt: skip
    census = metadata.get("census") or {}
    if census:
        probes = census.get("probes") or {}
        accepted = [name for name, verdict in probes.items() if verdict != "refused"]
        lines += ["", "## What it refuses", "",
                  f"Pictures with no lungs in them: {len(probes) - len(accepted)} of {len(probes)} refused"
                  + (f" (accepted: {', '.join(accepted)})." if accepted else ".")]  # fmt: skip
        films = census.get("films")
        if films:
            lines.append(
                f"Real X-rays of `{films['data_name']}`"
                + (" it never trained on" if films.get("seen_in_training") else "")
                + f": {films['refused']} of {films['checked']} refused as not a chest" + (f" ({', '.join(f'{k} {v}' for k, v in films['refused_by_source'].items())})."
                            if films["refused"] else ".")
            )  # fmt: skip
    lines += ["", "## Terms", metadata["licence"], ""]
    return "\n".join(lines)
