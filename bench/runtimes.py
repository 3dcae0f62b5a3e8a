"""Serving runtimes side by side: Keras (what ships), TFLite (XNNPACK) and ONNX Runtime, on the same real films.

Subjects: :mod:`cxr_core.modelling.runtime` converts the registered classifier (probability, embedding
and the last feature maps; Grad-CAM from them in numpy) and the lung model(s) from their ``.keras``
files, and every runtime scores the same model inputs, made from real 512x512 PNGs by the shipped
path. Baseline: Keras, as served today (:class:`GradCam`'s one compiled pass; the lung model's
compiled batch path), interleaved with the others in short rounds.

For each runtime and network: the largest difference from Keras (probability, heatmap, embedding;
lung probabilities), CPU milliseconds per film and wall milliseconds per call, at batch 1 (one
upload: the page and ``score_one``) and at the batch the CLI and ingest use (32 films per classifier
call, 16 per lung call). A runtime whose package is missing is reported as unavailable, not skipped
silently. Threads: two for every runtime (this machine's cores).

    .venv/bin/python bench/runtimes.py                 # 64 films, 8 rounds
    .venv/bin/python bench/runtimes.py --quick         # 8 films, 2 rounds
    .venv/bin/python bench/runtimes.py --lung-model v20261202-...   # also a candidate lung model
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from _common import emit, log, machine, median, parser, pngs_512

THREADS = 2


def _timed_rounds(calls: dict, rounds: int, n_films: int, calls_per_round: int = 1) -> dict:
    """Each entry ``rounds`` times, interleaved; CPU ms per film and wall ms per call (p50).

    An entry may make several calls of its scorer or forward pass in a round (``calls_per_round``: 8
    single films, or a folder in chunks); the wall time is divided by them, so "per call" is one such call."""
    cpu = {name: [] for name in calls}
    wall = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            if call is None:
                continue
            c0, t0 = time.process_time(), time.perf_counter()
            call()
            wall[name].append(1000 * (time.perf_counter() - t0))
            cpu[name].append(1000 * (time.process_time() - c0) / n_films)
    return {
        name: {
            "cpu_ms_per_film": round(median(cpu[name]), 3),
            "wall_ms_per_call_p50": round(median(wall[name]) / calls_per_round, 2),
        }
        for name in calls
        if calls[name] is not None
    }


def _chunks(x: np.ndarray, size: int):
    return [x[i : i + size] for i in range(0, len(x), size)]


def classifier_runtimes(model, inputs: np.ndarray, rounds: int) -> dict:
    from cxr_core.modelling import runtime

    scorers, unavailable = {}, {}
    for name, make in runtime.RUNTIMES.items():
        try:
            scorers[name] = make(model) if name == "keras" else make(model, threads=THREADS)
        except (ImportError, runtime.UnsupportedModel) as error:
            unavailable[name] = f"{type(error).__name__}: {error}"
    reference = scorers["keras"](inputs)
    equality = {}
    for name, scorer in scorers.items():
        out = np.concatenate([scorer(x).probabilities for x in _chunks(inputs, 32)]), scorer(inputs[:32])
        single = [float(scorer(inputs[i : i + 1]).probabilities[0]) for i in range(min(16, len(inputs)))]
        batch = out[1]
        equality[name] = {
            "max_abs_dp": float(np.abs(out[0] - reference.probabilities).max()),
            "max_abs_dp_batch_of_1": float(
                np.abs(np.array(single) - reference.probabilities[: len(single)]).max()
            ),
            "max_abs_dheatmap": float(np.abs(batch.heatmaps - reference.heatmaps[:32]).max()),
            "max_abs_dembedding": float(np.abs(batch.embeddings - reference.embeddings[:32]).max()),
        }
    for scorer in scorers.values():  # warm: traces, interpreters per batch size
        scorer(inputs[:1]), scorer(inputs[:32])
    one = {name: (lambda s=s: [s(inputs[i : i + 1]) for i in range(8)]) for name, s in scorers.items()}
    many = {name: (lambda s=s: [s(x) for x in _chunks(inputs, 32)]) for name, s in scorers.items()}
    timed_one = _timed_rounds(one, rounds, 8, calls_per_round=8)
    return {
        "equality_with_keras": equality,
        "batch_1": timed_one,
        "batch_32": _timed_rounds(many, rounds, len(inputs), calls_per_round=len(_chunks(inputs, 32))),
        "unavailable": unavailable,
    }


def lung_runtimes(model, smalls: np.ndarray, rounds: int) -> dict:
    from cxr_core.modelling import runtime
    from cxr_core.modelling.lungs import make_batch_predictor

    forwards, unavailable = {}, {}
    for name in runtime.RUNTIMES:
        try:
            forwards[name] = (
                make_batch_predictor(model)
                if name == "keras"
                else runtime.lung_forward(model, name, threads=THREADS)
            )
        except ImportError as error:
            unavailable[name] = f"{type(error).__name__}: {error}"
    reference = forwards["keras"](smalls)
    equality = {}
    for name, forward in forwards.items():
        got = np.concatenate([forward(x) for x in _chunks(smalls, 16)])
        equality[name] = {
            "max_abs_dprob": float(np.abs(got - reference).max()),
            "mask_pixels_changed": int(((got >= 0.5) != (reference >= 0.5)).sum()),
        }
    for forward in forwards.values():
        forward(smalls[:1]), forward(smalls[:16])
    one = {name: (lambda f=f: [f(smalls[i : i + 1]) for i in range(8)]) for name, f in forwards.items()}
    many = {name: (lambda f=f: [f(x) for x in _chunks(smalls, 16)]) for name, f in forwards.items()}
    timed_one = _timed_rounds(one, rounds, 8, calls_per_round=8)
    return {
        "side": int(model.input_shape[1]),
        "parameters": int(model.count_params()),
        "equality_with_keras": equality,
        "batch_1": timed_one,
        "batch_16": _timed_rounds(many, rounds, len(smalls), calls_per_round=len(_chunks(smalls, 16))),
        "unavailable": unavailable,
    }


def lungs_as_served(models: dict, rounds: int) -> dict:
    """Lung models as the product serves them (``LungModel``: TFLite when it has a twin), interleaved in
    the same rounds, each on its own input size made from the same films; the first is the baseline.

    A cheaper lung model is judged against the one that serves today, not against Keras: the
    comparison of runtimes above is within one network, this one is between networks."""
    one = {name: (lambda m=m, x=x: [m.probabilities([x[i]]) for i in range(8)]) for name, (m, x) in models.items()}
    many = {name: (lambda m=m, x=x: [m.probabilities(list(c)) for c in _chunks(x, 16)]) for name, (m, x) in models.items()}
    for lungs, smalls in models.values():  # warm: interpreters per batch size
        lungs.probabilities([smalls[0]]), lungs.probabilities(list(smalls[:16]))
    films = next(iter(models.values()))[1]  # every model's inputs are made from the same films
    timed_one = _timed_rounds(one, rounds, 8, calls_per_round=8)
    timed_many = _timed_rounds(many, rounds, len(films), calls_per_round=len(_chunks(films, 16)))
    baseline = next(iter(models))
    out = {}
    for name, (lungs, _) in models.items():
        out[name] = {
            "runtime": lungs.runtime,
            "side": lungs.side,
            "batch_1": timed_one[name],
            "batch_16": timed_many[name],
            "cpu_ratio_to_baseline": {
                "batch_1": round(timed_one[baseline]["cpu_ms_per_film"] / timed_one[name]["cpu_ms_per_film"], 2),
                "batch_16": round(timed_many[baseline]["cpu_ms_per_film"] / timed_many[name]["cpu_ms_per_film"], 2),
            },
        }
    return {"baseline": baseline, "models": out}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="films")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--model", default=None, help="classifier: registry version or folder (default: current)")
    p.add_argument(
        "--lung-model", action="append", default=[], help="another lung model: version or folder (repeatable)"
    )
    args = p.parse_args()
    if args.quick:
        args.size, args.rounds = 8, 2
    started = time.perf_counter()

    from cxr_core.imaging.decode import read_image
    from cxr_core.modelling.lungs import LungModel, load_lung_model
    from cxr_core.modelling.predictor import Predictor
    from cxr_core.registry.store import Registry
    from cxr_core.settings import models_dir

    predictor = Predictor(Registry(models_dir()).resolve(args.model))
    files = pngs_512(args.data)[: args.size]
    inputs = np.stack([predictor.model_input(path).pixels for path in files])
    grays = [read_image(path).pixels for path in files]
    log(f"runtimes: classifier {predictor.version} on {len(inputs)} films ...")
    result = {
        "classifier": {
            "version": predictor.version,
            **classifier_runtimes(predictor.model, inputs, args.rounds),
        }
    }
    lung_versions = ([predictor.lungs.version] if predictor.lungs else []) + args.lung_model
    result["lungs"] = {}
    served = {}
    for version in dict.fromkeys(lung_versions):
        if predictor.lungs and version == predictor.lungs.version:
            lungs = predictor.lungs
        elif Path(version).is_dir():  # a candidate folder, before it is registered
            lungs = LungModel(version)
        else:
            lungs = load_lung_model(version)
        log(f"runtimes: lung model {version} ...")
        smalls = np.stack([lungs.lung_input(gray)[0] for gray in grays])
        name = lungs.version if not Path(version).is_dir() else version
        result["lungs"][name] = lung_runtimes(lungs.model, smalls, args.rounds)
        served[name] = (lungs, smalls)

    result["lungs_as_served"] = lungs_as_served(served, args.rounds)

    emit(
        {
            "benchmark": "runtimes",
            "machine": machine(),
            "params": {"films": len(inputs), "rounds": args.rounds, "threads": THREADS},
            "figures": result,
            "seconds": round(time.perf_counter() - started, 1),
        },
        args.output,
    )


if __name__ == "__main__":
    main()
