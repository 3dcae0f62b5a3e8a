"""CPU cost of candidate lung networks before any of them is trained, against the 128 px U-Net.

Training a lung student takes 8-25 minutes a seed; what it will cost as served does not depend on its
weights. So each candidate is built with untrained weights, converted to TFLite as a trained lung model
is, and timed on the same random inputs in interleaved rounds beside the 128 px base-8 U-Net (the
baseline, built the same way), one film per call and 16 per call. Only the cost is measured here: Dice
and the refusals need training (``python -m cxr_core lungs-train``).

    .venv/bin/python bench/lung_architectures.py                          # the default candidates
    .venv/bin/python bench/lung_architectures.py --candidate 96:4:separable:4 --threads 1 2
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from _common import emit, log, machine, median, parser

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BASELINE = "128:8:unet:4"
CANDIDATES = ("96:4:unet:4", "96:4:light:4", "96:4:light-add:4",
              "80:4:unet:4", "64:4:unet:4", "96:4:separable:4", "80:4:separable:4", "96:4:unet:3")


def _side(spec: str) -> int:
    return int(spec.split(":")[0])


def _forward(spec: str, threads: int):
    from cxr_core.modelling.lungs import build_unet
    from cxr_core.modelling.runtime import TfliteLungForward, lung_float_twin, to_tflite

    _, base, architecture, depth = spec.split(":")
    model = build_unet(side=_side(spec), base_filters=int(base), architecture=architecture, depth=int(depth))
    return TfliteLungForward(to_tflite(lung_float_twin(model)), _side(spec), threads=threads), model.count_params()


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--candidate", nargs="+", default=list(CANDIDATES), help="SIDE:BASE_FILTERS:ARCHITECTURE:DEPTH")
    p.add_argument("--threads", nargs="+", type=int, default=[2], help="TFLite threads; the baseline uses the first (2: as served)")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    rounds = 2 if args.quick else args.rounds
    specs = [BASELINE] + [c for c in args.candidate if c != BASELINE]
    networks = {}
    for spec in specs:
        for threads in args.threads:
            log(f"lung_architectures: building {spec} ({threads} threads)")
            networks[(spec, threads)] = _forward(spec, threads)
    rng = np.random.default_rng(0)
    inputs = {spec: rng.integers(0, 256, (16, _side(spec), _side(spec)), dtype=np.uint8) for spec in specs}
    cpu = {key: {"batch_1": [], "batch_16": []} for key in networks}
    for _ in range(rounds):  # interleaved: every network meets the same minute of the machine
        for (spec, threads), (forward, _) in networks.items():
            x = inputs[spec]
            forward(x[:1]), forward(x)  # warm: the interpreter for each batch size is made on first use
            began = time.process_time()
            for i in range(len(x)):
                forward(x[i : i + 1])
            cpu[(spec, threads)]["batch_1"].append((time.process_time() - began) / len(x) * 1e3)
            began = time.process_time()
            forward(x), forward(x)
            cpu[(spec, threads)]["batch_16"].append((time.process_time() - began) / (2 * len(x)) * 1e3)
    base = {batch: median(cpu[(BASELINE, args.threads[0])][batch]) for batch in ("batch_1", "batch_16")}
    figures = {}
    for (spec, threads), (_, parameters) in networks.items():
        ms = {batch: round(median(values), 3) for batch, values in cpu[(spec, threads)].items()}
        figures[f"{spec}@{threads}"] = {
            "parameters": parameters,
            "cpu_ms_per_film": ms,
            "less_cpu_than_baseline": {batch: round(base[batch] / ms[batch], 2) for batch in ms},
        }
    emit(
        {
            "benchmark": "lung_architectures",
            "machine": machine(),
            "params": {"rounds": rounds, "threads": args.threads, "runtime": "tflite", "weights": "untrained"},
            "baseline": {"network": f"{BASELINE}@{args.threads[0]}", "cpu_ms_per_film": base},
            "figures": figures,
        },
        args.output,
    )


if __name__ == "__main__":
    main()
