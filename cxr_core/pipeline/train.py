"""Stage 2, train: the reference CNN on the ingested shards, with the operating threshold chosen on validation.

The input pipeline is ``tf.data`` over the uint8 training split held in memory (4200 Kaggle images are
about 70 MB), shuffled per epoch, augmented in parallel and prefetched, so the two CPU cores spend their
time in the convolutions. Augmentation is mild and geometric plus contrast: it is there so that framing
and exposure, which differ between hospitals, are weaker cues than the lungs themselves.

The threshold is picked here, on the validation split (by default the highest specificity that keeps
sensitivity >= 0.95), and stored with the model. The test split is never looked at before evaluation.
"""

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cxr_core import metrics, settings
from cxr_core.fsutil import atomic_directory, write_json_atomic
from cxr_core.modelling import ood
from cxr_core.pipeline.ingest import load_split
from cxr_core.registry.store import sha256_file
from cxr_core.settings import Layout


def run_train(
    ingest_dir: str | Path,
    out_dir: str | Path,
    params: dict | None = None,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Train, choose the threshold, fit the OOD reference, and write a servable model folder."""
    from cxr_core.modelling.gradcam import GradCam
    from cxr_core.modelling.networks import build_model, save_model

    params = settings.section("train", params)
    ingest_dir = Path(ingest_dir)
    ingest_summary = json.loads((ingest_dir / Layout.SUMMARY).read_text())
    keras.utils.set_random_seed(int(params["seed"]))
    x_train, y_train, train_rows = load_split(ingest_dir, "train")
    x_val, y_val, _ = load_split(ingest_dir, "val")
    side = x_train.shape[1]

    model = build_model(side=side, **params["model"])
    model.compile(
        optimizer=keras.optimizers.Adam(float(params["learning_rate"])),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
    )
    weights = sample_weights(
        y_train, [row["source"] for row in train_rows], float(params["max_source_weight"])
    )
    train_ds = make_dataset(
        x_train, y_train, weights, int(params["batch_size"]), params["augment"], int(params["seed"])
    )
    val_ds = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(256).prefetch(tf.data.AUTOTUNE)

    started = time.perf_counter()
    with atomic_directory(out_dir) as staging:
        callbacks = [
            keras.callbacks.EarlyStopping(
                monitor="val_auc", mode="max", patience=int(params["patience"]), restore_best_weights=True
            ),
            keras.callbacks.ModelCheckpoint(
                str(staging / "checkpoint.keras"), monitor="val_auc", mode="max", save_best_only=True
            ),
            keras.callbacks.CSVLogger(str(staging / Layout.HISTORY_CSV)),
            ProgressReporter(int(params["epochs"]), progress),
        ]
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=int(params["epochs"]),
            shuffle=False,  # the tf.data pipeline reshuffles every epoch itself
            callbacks=callbacks,
            verbose=0,
        )
        # EarlyStopping restored the best epoch's weights; the checkpoint file is only a crash backup.
        (staging / "checkpoint.keras").unlink(missing_ok=True)
        save_model(model, staging / Layout.MODEL)

        cam = GradCam(model)
        val_scores = cam(x_val)
        threshold, rule_text = choose_operating_threshold(
            y_val, val_scores.probabilities, params["threshold"]
        )
        train_embeddings = np.concatenate(
            [cam(x_train[i : i + 256]).embeddings for i in range(0, len(x_train), 256)]
        )
        ood.save(ood.fit(train_embeddings), staging / Layout.OOD)

        epochs_run = len(history.history["loss"])
        val_auc = _safe_auc(y_val, val_scores.probabilities)
        metadata = {
            "version": None,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "threshold": threshold,
            "threshold_rule": rule_text,
            "params": params,
            "data_fingerprint": ingest_summary["data_fingerprint"],
            "data_path": ingest_summary["data_path"],
            "input_side": side,
            "train_images": len(y_train),
            "val_images": len(y_val),
            "epochs_run": epochs_run,
            "best_epoch": int(np.argmax(history.history.get("val_auc", [0]))) + 1,
            "val_auc": val_auc,
            "train_seconds": round(time.perf_counter() - started, 1),
            "model_sha256": sha256_file(staging / Layout.MODEL),  # `predict --model work/model` checks it
        }
        write_json_atomic(staging / Layout.METADATA, metadata)
        write_json_atomic(
            staging / Layout.HISTORY_JSON,
            {key: [float(v) for v in values] for key, values in history.history.items()},
        )
    return metadata


def make_dataset(
    images: np.ndarray, labels: np.ndarray, weights: np.ndarray, batch_size: int, augment: dict, seed: int
):
    """Shuffled, augmented, prefetched batches of float32 0..255 images (the model rescales itself)."""
    augmenter = keras.Sequential(
        [
            keras.layers.RandomRotation(augment["rotation"], fill_mode="nearest", seed=seed),
            keras.layers.RandomZoom(augment["zoom"], fill_mode="nearest", seed=seed + 1),
            keras.layers.RandomTranslation(
                augment["translation"], augment["translation"], fill_mode="nearest", seed=seed + 2
            ),
            keras.layers.RandomContrast(augment["contrast"], value_range=(0, 255), seed=seed + 3),
            keras.layers.RandomBrightness(augment["brightness"], value_range=(0, 255), seed=seed + 4),
        ],
        name="augment",
    )

    def apply(batch_images, batch_labels, batch_weights):
        batch_images = tf.cast(batch_images, tf.float32)
        augmented = tf.clip_by_value(augmenter(batch_images, training=True), 0.0, 255.0)
        return augmented, batch_labels, batch_weights

    return (
        tf.data.Dataset.from_tensor_slices((images, labels.astype(np.float32), weights.astype(np.float32)))
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(apply, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def sample_weights(labels: np.ndarray, sources: list[str], max_source_weight: float = 1.0) -> np.ndarray:
    """Per-image loss weights: classes balanced, and within a class its sources balanced up to a cap.

    With ``max_source_weight`` above 1, a source that supplies few images of a class (say six normals
    from the hospitals that supplied the TB images) counts for more, so "this hospital means TB" costs
    the network something. The cap stops a handful of images from dominating the loss.
    """
    labels = np.asarray(labels)
    sources = np.asarray(sources)
    class_weights = balanced_class_weights(labels)
    weights = np.ones(len(labels), dtype=np.float64)
    for label, class_weight in class_weights.items():
        in_class = labels == label
        names, counts = np.unique(sources[in_class], return_counts=True)
        for name, count in zip(names, counts, strict=True):
            share = in_class.sum() / (len(names) * count)
            weights[in_class & (sources == name)] = min(max(share, 1.0), max_source_weight)
        weights[in_class] *= class_weight * in_class.sum() / weights[in_class].sum()
    return weights


def balanced_class_weights(labels: np.ndarray) -> dict[int, float]:
    """Weights so each class contributes equally to the loss (Kaggle's set is 5:1 Normal to TB)."""
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(c): float(w) for c, w in zip(classes, weights, strict=True)}


def choose_operating_threshold(y_val: np.ndarray, p_val: np.ndarray, rule: dict) -> tuple[float, str]:
    """Apply the ``train.threshold`` rule of params.yaml to validation scores; value and reason."""
    choice = metrics.select_threshold(
        y_val,
        p_val,
        rule=rule.get("rule", "sensitivity_floor"),
        min_sensitivity=float(rule.get("min_sensitivity", 0.95)),
        fixed_threshold=float(rule.get("value", 0.5)),
    )
    where = f"on the validation split ({len(y_val)} images, {int(np.sum(y_val))} TB)"
    return float(choice.threshold), f"{choice.reason} {where}"


def _safe_auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y_true)) < 2:
        return None
    return float(roc_auc_score(y_true, scores))


class ProgressReporter(keras.callbacks.Callback):
    """Reports each epoch with an ETA to a callable (the job status file) and to stdout (the log)."""

    def __init__(self, total_epochs: int, sink: Callable[[dict], None] | None):
        super().__init__()
        self.total_epochs = total_epochs
        self.sink = sink
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        elapsed = time.perf_counter() - self.started
        per_epoch = elapsed / (epoch + 1)
        event = {
            "stage": "train",
            "epoch": epoch + 1,
            "epochs": self.total_epochs,
            "loss": _rounded(logs.get("loss")),
            "auc": _rounded(logs.get("auc")),
            "val_loss": _rounded(logs.get("val_loss")),
            "val_auc": _rounded(logs.get("val_auc")),
            "eta_seconds": round(per_epoch * (self.total_epochs - epoch - 1), 1),
        }
        print(
            f"epoch {event['epoch']}/{self.total_epochs} loss={event['loss']} val_loss={event['val_loss']} "
            f"val_auc={event['val_auc']} eta={event['eta_seconds']}s",
            flush=True,
        )
        if self.sink:
            self.sink(event)


def _rounded(value):
    return None if value is None else round(float(value), 4)
