"""Training throughput: the real input pipeline against the same model fed from tensors in memory.

Data: real X-rays decoded and preprocessed once, repeated to ``--size`` images (4200 by default, the
Kaggle database's size; whole-film crops, or with a recipe that trains on its evidence the lung crops
the shipped model sees and their lung fields as targets). Subject: the model, optimizer, loss (the
evidence loss included when the recipe has it), metric, sample weights and
``cxr_core.pipeline.augment.training_dataset`` input pipeline (shuffle, batch, augmentation, prefetch) exactly as
``fit_network`` sets them up (``compiled_trainer``), with the training settings the shipped model (the
registry's current version) was trained with (params.yaml's when there is none). Baseline, the compute-only limit: the same model and
settings fed float32 batches already in memory. Epochs of the two alternate; the steady state is
timed from batch 10 of an epoch to its last batch, and each full epoch is timed as well.

    .venv/bin/python bench/train.py            # 4200 images, 2 epochs of each after warm-up
    .venv/bin/python bench/train.py --quick
"""

from __future__ import annotations

import time

import numpy as np
from _common import ROOT, emit, labelled, log, machine, median, parser, target

SKIP_BATCHES = 10


class BatchClock:
    """Keras callback: wall and CPU time at the end of every training batch."""

    def __init__(self):
        import keras

        clock = self

        class _Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                clock.marks.append((time.perf_counter(), time.process_time()))

        self.callback = _Callback()
        self.marks: list[tuple[float, float]] = []

    def steady(self, batch_size: int) -> tuple[float, float]:
        """Images/s and CPU ms per image from batch SKIP_BATCHES to the last one."""
        skip = min(SKIP_BATCHES, len(self.marks) // 3)
        (wall0, cpu0), (wall1, cpu1) = self.marks[skip], self.marks[-1]
        images = (len(self.marks) - 1 - skip) * batch_size
        return images / (wall1 - wall0), 1000 * (cpu1 - cpu0) / images


def _shipped_settings() -> dict | None:
    """The training settings recorded in the current registry version's metadata, if any."""
    import json

    from cxr_core.errors import CxrError
    from cxr_core.registry.store import Registry
    from cxr_core.settings import Layout

    try:
        model_dir, _ = Registry().resolve_with_warning(None)
        return json.loads((model_dir / Layout.METADATA).read_text()).get("params")
    except (CxrError, OSError, ValueError):
        return None


def _lung_options(ingest: dict) -> dict:
    """The input path's lung arguments as the current version was trained with them (its targets are
    the lungs in that view); without a registered classifier, the current lung model with ``ingest``'s."""
    from cxr_core.errors import CxrError
    from cxr_core.modelling.lungs import load_lung_model
    from cxr_core.modelling.predictor import Predictor
    from cxr_core.registry.store import Registry

    try:
        model_dir, _ = Registry().resolve_with_warning(None)
        return Predictor(model_dir).lung_options()
    except CxrError:
        return {"lungs": load_lung_model(), "crop_to_lungs": bool(ingest["lung_crop"]),
                "lung_margin": float(ingest["lung_margin"]), "mask_to_lungs": bool(ingest["lung_mask"])}  # fmt: skip


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4200, help="images per epoch")
    p.add_argument("--rounds", type=int, default=2, help="epochs of each, alternating, after warm-up")
    args = p.parse_args()
    if args.quick:
        args.size, args.rounds = 256, 1
    started = time.perf_counter()

    import keras
    import tensorflow as tf

    from cxr_core.imaging.preprocess import to_model_input
    from cxr_core.modelling.networks import OUTPUT
    from cxr_core.pipeline.augment import pool_to_map, training_dataset
    from cxr_core.pipeline.ingest import lung_masks_in_view
    from cxr_core.pipeline.train import (
        EVIDENCE,
        compiled_trainer,
        evidence_targets,
        sample_weights,
        trains_on_evidence,
    )
    from cxr_core.settings import load_params

    settings = load_params(ROOT / "params.yaml")
    params = settings["train"]
    shipped = _shipped_settings()
    if shipped is not None:
        params = {**params, **shipped}
    batch_size = int(params["batch_size"])
    guided = trains_on_evidence(params)
    lung_options = _lung_options(settings["ingest"]) if guided else {}
    items = labelled(args.data, None if args.size >= 955 else args.size)
    prepared = [to_model_input(path, **lung_options) for path, _ in items]
    pictures = np.stack([film.pixels for film in prepared])[..., None]
    side = pictures.shape[1]
    # The evidence targets as training makes them: the grown lung fields in the network's view, and the
    # lesion boxes (none in these rows: an empty channel costs the loss the same arithmetic).
    targets = (
        evidence_targets(np.stack([lung_masks_in_view(film, side) for film in prepared]), [{}] * len(prepared))
        if guided else None
    )  # fmt: skip
    labels = np.array([label for _, label in items], dtype=np.int32)
    sources = [path.parent.parent.name for path, _ in items]
    repeat = np.arange(args.size) % len(items)
    x, y = pictures[repeat], labels[repeat]
    targets = None if targets is None else targets[repeat]
    weights = sample_weights(
        y, [sources[i] for i in repeat], float(params["max_source_weight"]),
        float(params.get("single_class_source_weight", 1.0)),
    )  # fmt: skip
    log(f"train: {len(items)} distinct X-rays repeated to {len(x)} images"
        + (", with the evidence loss's targets" if guided else ""))

    def compiled():
        keras.utils.set_random_seed(int(params["seed"]))
        return compiled_trainer(side, params, int(np.ceil(len(x) / batch_size)), guided)

    _, pipeline_trainer, map_side = compiled()
    pipeline = training_dataset(x, y, weights, params, int(params["seed"]), targets, map_side)
    if guided:  # the same two outputs and weights, the targets pooled to the map as the pipeline pools them
        outputs = {OUTPUT: y.astype(np.float32), EVIDENCE: pool_to_map(targets, side // map_side)}
        sample = {OUTPUT: weights.astype(np.float32), EVIDENCE: np.ones(len(x), np.float32)}
        slices = (x.astype(np.float32), outputs, sample)
    else:
        slices = (x.astype(np.float32), y.astype(np.float32), weights.astype(np.float32))
    in_memory = tf.data.Dataset.from_tensor_slices(slices).batch(batch_size).cache().prefetch(tf.data.AUTOTUNE)
    runs = {"pipeline": (pipeline_trainer, pipeline), "in_memory": (compiled()[1], in_memory)}
    for model, data in runs.values():  # trace the train step, fill the cache
        model.fit(data, epochs=1, verbose=0, shuffle=False)

    measured: dict[str, list[dict]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, (model, data) in runs.items():
            clock = BatchClock()
            epoch_started = time.perf_counter()
            model.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=[clock.callback])
            epoch_s = time.perf_counter() - epoch_started
            rate, cpu_ms = clock.steady(batch_size)
            measured[name].append({"rate": rate, "cpu_ms": cpu_ms, "epoch_s": epoch_s})
            log(f"train round {r + 1}: {name} {rate:.0f} img/s steady, epoch {epoch_s:.1f} s")

    rounds = [a["rate"] / b["rate"] for a, b in zip(measured["pipeline"], measured["in_memory"], strict=True)]
    ratio = median(rounds)
    epoch_s = median([m["epoch_s"] for m in measured["pipeline"]]) * 4200 / args.size
    emit(
        {
            "benchmark": "train",
            "machine": machine(),
            "params": {
                "images_per_epoch": len(x),
                "distinct_images": len(items),
                "batch_size": batch_size,
                "rounds": args.rounds,
                "settings": "the shipped model's (registry metadata)" if shipped else "params.yaml",
                "evidence_loss": guided,  # the shipped recipe trains where its evidence lies: timed with it
            },
            "figures": {
                "images_per_s": round(median([m["rate"] for m in measured["pipeline"]]), 1),
                "cpu_ms_per_image": round(median([m["cpu_ms"] for m in measured["pipeline"]]), 3),
                "epoch_s": round(median([m["epoch_s"] for m in measured["pipeline"]]), 2),
                "epoch_4200_s": round(epoch_s, 2),
            },
            "baseline": {
                "what": "same model and settings fed float32 batches already in memory (no augmentation)",
                "images_per_s": round(median([m["rate"] for m in measured["in_memory"]]), 1),
                "cpu_ms_per_image": round(median([m["cpu_ms"] for m in measured["in_memory"]]), 3),
                "epoch_s": round(median([m["epoch_s"] for m in measured["in_memory"]]), 2),
            },
            "ratios": {
                "of_compute_limit": round(ratio, 3),
                "rounds": [round(v, 3) for v in rounds],
                "cpu_time_of_compute_limit": round(
                    median([m["cpu_ms"] for m in measured["in_memory"]])
                    / median([m["cpu_ms"] for m in measured["pipeline"]]),
                    3,
                ),
            },
            "targets": {
                "of_compute_limit": target(ratio, 0.90, ">=", ">= 90% of the compute-only limit"),
                "epoch_4200_s": target(epoch_s, 60.0, "<=", "one epoch over 4200 images well under a minute"),
            },
            "seconds": round(time.perf_counter() - started, 1),
        },
        args.output,
    )


if __name__ == "__main__":
    main()
