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
from cxr_core.pipeline.datasets import sources_with_both_classes
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
    targets_train: np.ndarray | None = None,
    targets_val: np.ndarray | None = None,
    checkpoint: Path | None = None,
    sources_val: list[str] | None = None,
):
    """Build and fit the network the settings name; early stopping restores the best validation epoch.

    The one training loop: :func:`run_train` (the pipeline) and leave-one-source-out evaluation
    (:mod:`cxr_core.pipeline.loso`) both call it, so LOSO measures exactly the recipe that ships.
    With evidence weights in ``params["evidence"]`` and targets (see :func:`evidence_targets`) the
    network is also trained on where its evidence lies (:func:`evidence_loss`); what is returned is
    always the plain serving network. ``sources_val`` lets early stopping's validation AUC weigh the
    validation films by the training split's source rule (``single_class_source_weight``).
    """
    from cxr_core.modelling.networks import OUTPUT
    from cxr_core.pipeline.augment import pool_to_map, training_dataset

    seed = int(params["seed"])
    steps = int(np.ceil(len(x_train) / int(params["batch_size"])))
    single_weight = float(params.get("single_class_source_weight", 1.0))
    weights = sample_weights(y_train, sources_train, float(params["max_source_weight"]), single_weight)
    val_weights = None
    if single_weight != 1.0 and sources_val is not None:
        val_weights = validation_weights(sources_val, single_class_sources(y_train, sources_train), single_weight)
        if len(np.unique(np.asarray(y_val)[val_weights > 0])) < 2:
            raise ValueError(
                "with train.single_class_source_weight 0 the validation films left hold one class only, so "
                "early stopping would have no AUC to follow: validate on a source that has both classes"
            )
    # With validation weights the AUC early stopping follows must use them: Keras applies sample
    # weights only to weighted_metrics. Without them the shipped recipe's metric stays as it was.
    auc_metric = "weighted_metrics" if val_weights is not None else "metrics"
    guided = targets_train is not None and trains_on_evidence(params)
    keras.utils.set_random_seed(seed)
    model, trainer, map_side = compiled_trainer(x_train.shape[1], params, steps, guided, auc_metric)
    if guided:
        consistent = marker_consistency(params) > 0
        names = (OUTPUT, EVIDENCE, CONSISTENCY) if consistent else (OUTPUT, EVIDENCE)
        train_ds = training_dataset(x_train, y_train, weights, params, seed, targets_train, map_side, names)
        pooled_val = pool_to_map(targets_val, x_train.shape[1] // map_side)
        val_outputs = {OUTPUT: y_val.astype(np.float32), EVIDENCE: pooled_val}
        val_inputs = x_val
        if consistent:  # validation films as they are, twice: a zero difference, only the AUC counts
            val_inputs = {"film": x_val, "other_view": x_val}
            val_outputs[CONSISTENCY] = np.zeros(len(x_val), np.float32)
        if val_weights is None:
            val_ds = tf.data.Dataset.from_tensor_slices((val_inputs, val_outputs)).batch(256)
        else:
            val_sample_weights = {name: np.ones_like(val_weights) for name in val_outputs}
            val_sample_weights[OUTPUT] = val_weights
            val_ds = tf.data.Dataset.from_tensor_slices((val_inputs, val_outputs, val_sample_weights)).batch(256)
        callbacks = [_PlainMetricNames(OUTPUT), *(callbacks or [])]
    else:
        train_ds = training_dataset(x_train, y_train, weights, params, seed)
        val_data = (x_val, y_val.astype(np.float32)) + (() if val_weights is None else (val_weights,))
        val_ds = tf.data.Dataset.from_tensor_slices(val_data).batch(256)
        callbacks = list(callbacks or [])
    stop = keras.callbacks.EarlyStopping(
        monitor="val_auc", mode="max", patience=int(params["patience"]), restore_best_weights=True
    )
    callbacks.insert(1 if guided else 0, stop)
    if checkpoint is not None:
        callbacks.insert(2 if guided else 1, _BestServingCheckpoint(model, checkpoint))
    history = trainer.fit(
        train_ds.prefetch(tf.data.AUTOTUNE),
        validation_data=val_ds.prefetch(tf.data.AUTOTUNE),
        epochs=int(params["epochs"]),
        shuffle=False,  # the tf.data pipeline reshuffles every epoch itself
        callbacks=callbacks,
        verbose=0,
    )
    return model, history


EVIDENCE = "evidence"
CONSISTENCY = "marker_consistency"


def marker_consistency(params: dict) -> float:
    """The marker consistency loss's weight in a recipe (``train.augment.marker_consistency``)."""
    return float((params.get("augment") or {}).get("marker_consistency", 0.0))


def compiled_trainer(side: int, params: dict, steps: int, guided: bool, auc_metric: str = "metrics"):
    """The serving network, what ``fit`` runs on (itself, or with ``guided`` its two-output evidence
    trainer), compiled as the recipe says, and the evidence map's side in cells (None unguided).

    One place for it, so that the training benchmark times the very model and loss the recipe trains.
    """
    from cxr_core.modelling.networks import OUTPUT, build_network

    model = build_network(side, params["model"])
    if not guided:
        model.compile(
            optimizer=make_optimizer(params, steps),
            loss="binary_crossentropy",
            **{auc_metric: [keras.metrics.AUC(name="auc")]},
        )
        return model, model, None
    evidence = params.get("evidence") or {}
    trainer, map_side = evidence_trainer(model, evidence)
    losses = {OUTPUT: "binary_crossentropy", EVIDENCE: evidence_loss(evidence)}
    weights, consistency = None, marker_consistency(params)
    if consistency > 0:
        trainer = consistency_trainer(model, trainer)
        losses[CONSISTENCY] = "mean_squared_error"
        weights = {OUTPUT: 1.0, EVIDENCE: 1.0, CONSISTENCY: consistency}
    trainer.compile(
        optimizer=make_optimizer(params, steps),
        loss=losses,
        loss_weights=weights,
        **{auc_metric: {OUTPUT: [keras.metrics.AUC(name="auc")]}},
    )
    return model, trainer, map_side


class _BothViews(keras.layers.Layer):
    """Both views of a batch as one batch (first views, then second views): one forward pass, so batch
    normalisation normalises and updates its statistics once per step, over both, as for any batch."""

    def call(self, film, other_view):
        return tf.concat([film, other_view], axis=0)


class _FirstViews(keras.layers.Layer):
    """The first half of a both-views batch: the films as the classification and evidence losses see them."""

    def call(self, values, film):
        return values[: tf.shape(film)[0]]


class _LogitGap(keras.layers.Layer):
    """How far the second view moved each film's logit: the difference of the two views' pooled features
    through the output unit's weights. Before dropout, so that the gap is the marker's and not that of
    two dropout masks (the logit as served, where dropout is off, differs by exactly this)."""

    def __init__(self, dense, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense

    def call(self, pooled, film):
        count = tf.shape(film)[0]
        return tf.squeeze(tf.matmul(pooled[:count] - pooled[count:], self.dense.kernel), axis=-1)


def consistency_trainer(model, evidence_view):
    """The evidence trainer run on two views of each film (as given, and with another marker) in one
    batch: the first views' outputs train as before, and the gap between the two views' logits is a
    third output."""
    from cxr_core.modelling.networks import EMBEDDING, OUTPUT

    shape = evidence_view.input_shape[1:]
    film = keras.Input(shape, name="film")
    other_view = keras.Input(shape, name="other_view")
    pooled_view = keras.Model(
        evidence_view.input, {**evidence_view.output, EMBEDDING: model.get_layer(EMBEDDING).output}
    )
    both = pooled_view(_BothViews(name="both_views")(film, other_view))
    return keras.Model(
        {"film": film, "other_view": other_view},
        {
            OUTPUT: _FirstViews(name=OUTPUT)(both[OUTPUT], film),
            EVIDENCE: _FirstViews(name=EVIDENCE)(both[EVIDENCE], film),
            CONSISTENCY: _LogitGap(model.get_layer(OUTPUT), name=CONSISTENCY)(both[EMBEDDING], film),
        },
        name="consistency_trainer",
    )


class _CamMap(keras.layers.Layer):
    """The class activation map ``features . w`` of a GAP + one-unit network (training only).

    For such a network its positive part is exactly what Grad-CAM computes at serving (the gradient of
    the logit with respect to each feature map is the unit's weight over the number of cells), so the
    loss sees the very map the Screen page draws.
    """

    def __init__(self, dense, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense

    def call(self, features):
        return tf.einsum("bhwc,co->bhw", features, self.dense.kernel)


def evidence_trainer(model, evidence: dict):
    """A training view of ``model`` with a second output, its CAM; and the CAM's side in cells."""
    from cxr_core.modelling.networks import EMBEDDING, OUTPUT, feature_layer_name

    layer_types = [layer.__class__.__name__ for layer in model.layers]
    if "GlobalAveragePooling2D" not in layer_types or "Flatten" in layer_types:
        raise ValueError(
            "evidence training needs a network whose map is its explanation (model.architecture: cam)"
        )
    if model.get_layer(EMBEDDING).__class__.__name__ != "GlobalAveragePooling2D":
        raise ValueError("evidence training needs global average pooling straight before the output unit")
    features = model.get_layer(feature_layer_name(model)).output
    cam = _CamMap(model.get_layer(OUTPUT), name=EVIDENCE)(features)
    trainer = keras.Model(model.input, {OUTPUT: model.output, EVIDENCE: cam}, name="evidence_trainer")
    return trainer, int(features.shape[1])


def evidence_loss(evidence: dict):
    """"Right for the right reasons": penalise the map's share outside the (grown) lung fields on every
    film, and reward its share inside the radiologists' boxes on films that have them.

    Shares, not raw values: the loss moves *where* the evidence lies and leaves *how much* to the
    classification loss. Targets are (n, h, w, 2): channel 0 the grown lung fields, channel 1 the boxes
    (all zero on films without boxes, which then get no box term).
    """
    lung_weight = float(evidence.get("lung_weight", 0.0))
    lesion_weight = float(evidence.get("lesion_weight", 0.0))

    def loss(y_true, y_pred):
        positive = tf.nn.relu(y_pred)
        total = tf.reduce_sum(positive, axis=[1, 2], keepdims=True)
        # Where the map has no positive cell (Grad-CAM would be blank) its softmax still says where the
        # network leans, so the film is not exempt from the loss by having a blank map.
        flat = tf.reshape(y_pred, [tf.shape(y_pred)[0], -1])
        soft = tf.reshape(tf.nn.softmax(flat, axis=-1), tf.shape(y_pred))
        share = tf.where(total > 1e-6, positive / (total + 1e-6), soft)
        outside = tf.reduce_sum(share * (1.0 - y_true[..., 0]), axis=[1, 2])
        boxed = tf.reduce_sum(y_true[..., 1], axis=[1, 2])
        on_lesions = tf.reduce_sum(share * tf.minimum(y_true[..., 1] * 4.0, 1.0), axis=[1, 2])
        has_boxes = tf.cast(boxed > 0, tf.float32)
        return lung_weight * outside + lesion_weight * has_boxes * (1.0 - on_lesions)

    return loss


class _BestServingCheckpoint(keras.callbacks.Callback):
    """Save the serving network (never the training view around it) whenever validation AUC improves."""

    def __init__(self, serving_model, path: Path):
        super().__init__()
        self.serving_model, self.path, self.best = serving_model, Path(path), -np.inf

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_auc")
        if value is not None and value > self.best:
            self.best = value
            self.serving_model.save(self.path)


class _PlainMetricNames(keras.callbacks.Callback):
    """Name a two-output trainer's AUC as a one-output model's (``auc``, ``val_auc``).

    Early stopping, the progress reporter and the history file then read the same names for every
    recipe; the evidence loss stays visible as ``evidence_loss``.
    """

    def __init__(self, output: str):
        super().__init__()
        self.prefix = output + "_"

    def on_epoch_end(self, epoch, logs=None):
        for lead in ("", "val_"):
            if logs is not None and lead + self.prefix + "auc" in logs:
                logs[lead + "auc"] = logs.pop(lead + self.prefix + "auc")


def evidence_targets(masks: np.ndarray, rows: list[dict]) -> np.ndarray:
    """(n, side, side, 2) uint8 0/255 training targets: the grown lung fields and the lesion boxes."""
    from cxr_core.pipeline.ingest import lesion_masks

    side = masks.shape[1]
    return np.stack([masks[..., 1], lesion_masks(rows, side) * np.uint8(255)], axis=-1)


def evidence_reference(ingest_dir, val_rows: list[dict], raw_maps: np.ndarray) -> dict | None:
    """What "usual" evidence looks like for this model: the spread of its lung share on validation films.

    A film's evidence is flagged on the Screen page only when it lies further outside the lungs than on
    all but 5 % of these films, so the warning means "unusual for this model", not "always".
    """
    from cxr_core.modelling.evidence import film_evidence
    from cxr_core.pipeline.ingest import load_extras

    extras = load_extras(ingest_dir, val_rows)
    if not extras["available"] or not extras["masks"].any():
        return None
    shares = [film_evidence(raw, masks[..., 1])["lung_share"] for raw, masks in zip(raw_maps, extras["masks"], strict=True)]
    shares = [share for share in shares if share is not None]
    if len(shares) < 20:
        return None
    return {
        "lung_share_p05": round(float(np.percentile(shares, 5)), 4),
        "lung_share_p50": round(float(np.percentile(shares, 50)), 4),
        "n_films": len(shares),
        "split": "validation",
        "how": (
            f"5th and 50th percentiles of the share of Grad-CAM mass inside the lung fields (grown by 5 % of "
            f"the film's longer side) over the {len(shares)} validation films with a map; a film below the "
            "5th percentile is flagged as unusual for this model"
        ),
    }


def trains_on_evidence(params: dict) -> bool:
    """Whether the recipe (a ``train`` section) asks for the evidence loss."""
    evidence = params.get("evidence") or {}
    return evidence.get("lung_weight", 0) > 0 or evidence.get("lesion_weight", 0) > 0


def targets_for(params: dict, masks: np.ndarray, rows: list[dict]) -> np.ndarray | None:
    """The evidence targets of these films, or None: the recipe asks for no evidence loss, or the ingest
    was made without the lung model (``ingest.lung_check`` false) and has no fields to aim at. Then the
    network trains without the loss, and the model's metadata and card say so."""
    if not trains_on_evidence(params) or not masks.any():
        return None
    return evidence_targets(masks, rows)


def training_targets(ingest_dir, params: dict, train_rows: list[dict], val_rows: list[dict]):
    """The evidence targets of the train and validation films (both None when there are none)."""
    from cxr_core.pipeline.ingest import load_extras

    if not trains_on_evidence(params):
        return None, None
    train = targets_for(params, load_extras(ingest_dir, train_rows)["masks"], train_rows)
    if train is None:
        print("no lung masks in this ingest: training without the evidence loss", flush=True)
        return None, None
    return train, targets_for(params, load_extras(ingest_dir, val_rows)["masks"], val_rows)


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
    from cxr_core.modelling.runtime import write_classifier_tflite

    params = settings.section("train", params)
    ingest_dir = Path(ingest_dir)
    ingest_summary = json.loads((ingest_dir / Layout.SUMMARY).read_text())
    x_train, y_train, train_rows = load_split(ingest_dir, "train")
    x_val, y_val, val_rows = load_split(ingest_dir, "val")
    targets_train, targets_val = training_targets(ingest_dir, params, train_rows, val_rows)

    started = time.perf_counter()
    with atomic_directory(out_dir) as staging:
        model, history = fit_network(
            x_train,
            y_train,
            [row["source"] for row in train_rows],
            x_val,
            y_val,
            params,
            targets_train=targets_train,
            targets_val=targets_val,
            sources_val=[row["source"] for row in val_rows],
            checkpoint=staging / "checkpoint.keras",  # a crash backup; early stopping restores the best epoch
            callbacks=[
                keras.callbacks.CSVLogger(str(staging / Layout.HISTORY_CSV)),
                ProgressReporter(int(params["epochs"]), progress),
            ],
        )
        (staging / "checkpoint.keras").unlink(missing_ok=True)
        save_model(model, staging / Layout.MODEL)
        tflite_sha256 = write_classifier_tflite(staging, model)  # serving's runtime; None: Keras serves

        cam = GradCam(model)
        val_scores = cam(x_val)
        threshold, rule_text = choose_operating_threshold(
            y_val, val_scores.probabilities, params["threshold"]
        )
        train_embeddings = np.concatenate(
            [cam(x_train[i : i + 256]).embeddings for i in range(0, len(x_train), 256)]
        )
        ood.save(ood.fit(train_embeddings), staging / Layout.OOD)

        reference = evidence_reference(ingest_dir, val_rows, val_scores.raw)
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
        if tflite_sha256:  # with the weights it was converted from: a twin of other weights is never served
            metadata.update(tflite_sha256=tflite_sha256, tflite_model_sha256=metadata["model_sha256"])
        if reference:
            metadata["evidence_reference"] = reference
        metadata["evidence_training"] = (
            "evidence loss applied" if targets_train is not None
            else "evidence loss asked for but not applied: the ingest had no lung masks" if trains_on_evidence(params)
            else "no evidence loss"
        )  # fmt: skip
        write_json_atomic(staging / Layout.METADATA, metadata)
        write_json_atomic(
            staging / Layout.HISTORY_JSON,
            {key: [float(v) for v in values] for key, values in history.history.items()},
        )
    return metadata


def sample_weights(
    labels: np.ndarray, sources: list[str], max_source_weight: float = 1.0, single_class_source_weight: float = 1.0
) -> np.ndarray:
    """Per-image loss weights: classes balanced, and within a class its sources balanced up to a cap.

    With ``max_source_weight`` above 1, a source that supplies few images of a class (say six normals
    from the hospitals that supplied the TB images) counts for more, so "this hospital means TB" costs
    the network something. The cap stops a handful of images from dominating the loss.
    ``single_class_source_weight`` scales the films of sources that supply only one class here: their
    source and their label are the same fact, so they reward recognising the source. Each class keeps
    its total weight, carried by the remaining sources.
    """
    if not 0.0 <= single_class_source_weight < float("inf"):
        raise ValueError(
            f"train.single_class_source_weight must be a number >= 0, not {single_class_source_weight}"
        )
    labels = np.asarray(labels)
    sources = np.asarray(sources)
    class_weights = balanced_class_weights(labels)
    single = np.isin(sources, single_class_sources(labels, sources))
    weights = np.ones(len(labels), dtype=np.float64)
    for label, class_weight in class_weights.items():
        in_class = labels == label
        names, counts = np.unique(sources[in_class], return_counts=True)
        for name, count in zip(names, counts, strict=True):
            share = in_class.sum() / (len(names) * count)
            weights[in_class & (sources == name)] = min(max(share, 1.0), max_source_weight)
        weights[in_class & single] *= single_class_source_weight
        if weights[in_class].sum() <= 0:
            raise ValueError(
                f"every film of class {label} comes from a source with only that class, and "
                f"train.single_class_source_weight is {single_class_source_weight}: nothing would teach "
                "that class; give a source with both classes or raise the weight"
            )
        weights[in_class] *= class_weight * in_class.sum() / weights[in_class].sum()
    return weights


def single_class_sources(
    labels: np.ndarray, sources: list[str], min_per_class: int = settings.MIN_FILMS_PER_CLASS
) -> list[str]:
    """Sources that supply fewer than ``min_per_class`` films of one of the classes here (their name
    predicts the label): TBX11K, with one stray normal among 641 TB films, is one. The complement of
    LOSO's two-class sources, by the same rule (:func:`~cxr_core.pipeline.datasets.sources_with_both_classes`)."""
    labels, sources = np.asarray(labels).tolist(), np.asarray(sources).tolist()
    return sorted(set(sources) - set(sources_with_both_classes(labels, sources, min_per_class)))


def validation_weights(sources_val: list[str], single_in_training: list[str], weight: float) -> np.ndarray:
    """Weights of the validation films for early stopping's AUC: the training split's rule, so an epoch
    is not chosen for telling one single-class source from another."""
    return np.where(np.isin(np.asarray(sources_val), single_in_training), weight, 1.0).astype(np.float32)


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
