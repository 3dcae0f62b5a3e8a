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


def fit_network(
    x_train: np.ndarray,
    y_train: np.ndarray,
    sources_train: list[str],
    x_val: np.ndarray,
    y_val: np.ndarray,
    params: dict,
    callbacks: list | None = None,
):
    """Build and fit the network the settings name; early stopping restores the best validation epoch.

    The one training loop: :func:`run_train` (the pipeline) and leave-one-source-out evaluation
    (:mod:`cxr_core.pipeline.loso`) both call it, so LOSO measures exactly the recipe that ships.
    """
    from cxr_core.modelling.networks import build_network
    from cxr_core.pipeline.augment import training_dataset

    seed = int(params["seed"])
    keras.utils.set_random_seed(seed)
    model = build_network(x_train.shape[1], params["model"])
    steps = int(np.ceil(len(x_train) / int(params["batch_size"])))
    model.compile(
        optimizer=make_optimizer(params, steps),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
    )
    weights = sample_weights(y_train, sources_train, float(params["max_source_weight"]))
    train_ds = training_dataset(x_train, y_train, weights, params, seed)
    val_ds = tf.data.Dataset.from_tensor_slices((x_val, y_val.astype(np.float32))).batch(256)
    stop = keras.callbacks.EarlyStopping(
        monitor="val_auc", mode="max", patience=int(params["patience"]), restore_best_weights=True
    )
    history = model.fit(
        train_ds.prefetch(tf.data.AUTOTUNE),
        validation_data=val_ds.prefetch(tf.data.AUTOTUNE),
        epochs=int(params["epochs"]),
        shuffle=False,  # the tf.data pipeline reshuffles every epoch itself
        callbacks=[stop, *(callbacks or [])],
        verbose=0,
    )
    return model, history


def make_optimizer(params: dict, steps_per_epoch: int):
    rate = float(params["learning_rate"])
    if params["schedule"] == "cosine":
        warmup = int(params["warmup_epochs"]) * steps_per_epoch
        rate = keras.optimizers.schedules.CosineDecay(
            rate * 0.1,
            decay_steps=max(1, int(params["epochs"]) * steps_per_epoch - warmup),
            warmup_target=rate,
            warmup_steps=warmup,
            alpha=0.02,
        )
    elif params["schedule"] != "constant":
        raise ValueError(f"unknown schedule {params['schedule']!r}")
    if params["optimizer"] == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=float(params["weight_decay"]))
    if params["optimizer"] == "adam":
        return keras.optimizers.Adam(rate)
    raise ValueError(f"unknown optimizer {params['optimizer']!r}")


def run_train(
    ingest_dir: str | Path,
    out_dir: str | Path,
    params: dict | None = None,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Train, choose the threshold, fit the OOD reference, and write a servable model folder."""
    from cxr_core.modelling.gradcam import GradCam
    from cxr_core.modelling.networks import save_model

    params = settings.section("train", params)
    ingest_dir = Path(ingest_dir)
    ingest_summary = json.loads((ingest_dir / Layout.SUMMARY).read_text())
    x_train, y_train, train_rows = load_split(ingest_dir, "train")
    x_val, y_val, _ = load_split(ingest_dir, "val")

    started = time.perf_counter()
    with atomic_directory(out_dir) as staging:
        model, history = fit_network(
            x_train,
            y_train,
            [row["source"] for row in train_rows],
            x_val,
            y_val,
            params,
            callbacks=[
                keras.callbacks.ModelCheckpoint(  # a crash backup; early stopping restores the best epoch
                    str(staging / "checkpoint.keras"), monitor="val_auc", mode="max", save_best_only=True
                ),
                keras.callbacks.CSVLogger(str(staging / Layout.HISTORY_CSV)),
                ProgressReporter(int(params["epochs"]), progress),
            ],
        )
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
            "data_name": ingest_summary.get("data_name"),
            "data_path": settings.project_relative(ingest_summary["data_path"]),
            "data_layout": ingest_summary.get("layout"),
            "input_side": x_train.shape[1],
            "preprocessing": ingest_summary.get("preprocessing") or {},  # serving repeats it exactly
            "architecture": params["model"]["architecture"],
            "parameters": int(model.count_params()),
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
