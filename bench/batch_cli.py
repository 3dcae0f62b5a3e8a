"""Batch CLI throughput on a folder of real 512x512 PNG X-rays, against decode-and-resize only.

Subject: the real command, ``python -m cxr_core predict FOLDER`` in its own process, its rows read as
they stream out. Its steady-state rate is taken from the first batch of rows to the last (process
start, imports and model loading are reported apart, as ``startup_s``).
Baseline, measured right before and right after every CLI run: the decode-and-resize-only limit, the
same files read, decoded and area-resized to 128x128 on all cores and nothing else.
The CLI scores with the registry's current model (the one that ships) and the lung model it was trained
with. Where the time goes: the CPU milliseconds per image of each step of that path, measured apart on
the same files (``stages``), and the ratio those costs allow (``ceiling_from_stage_costs``).

    .venv/bin/python bench/batch_cli.py            # 1284 files (each real 512x512 PNG twice), 3 rounds
    .venv/bin/python bench/batch_cli.py --quick
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import psutil
from _common import (
    PYTHON,
    ROOT,
    DecodeLimit,
    emit,
    log,
    machine,
    median,
    parser,
    pngs_512,
    scratch,
    stage_costs,
    target,
)

CLI_BATCH = 32  # rows arrive one scored batch at a time (cxr_core.modelling.predictor.BATCH_SIZE)
STEADY_AFTER = 4 * CLI_BATCH  # rows before the steady state is timed


def run_cli(folder, expected: int, extra: list[str]) -> dict:
    """Run the CLI on ``folder``: when rows arrived, and the CPU time it used in its steady state.

    The steady state starts once the first batches are out: while the first batch is traced and
    scored the decoders run ahead, so the rows right after it come out faster than sustained.
    """
    started = time.perf_counter()
    process = subprocess.Popen(
        [PYTHON, "-m", "cxr_core", "predict", str(folder), "--format", "jsonl", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watched = psutil.Process(process.pid)
    skip = STEADY_AFTER if expected > 2 * STEADY_AFTER else CLI_BATCH
    arrivals, bad, cpu = [], 0, {}
    for line in process.stdout:
        arrivals.append(time.perf_counter() - started)
        bad += not json.loads(line)["ok"]
        if len(arrivals) in (skip, expected):
            cpu[len(arrivals)] = _cpu_seconds(watched)  # the last one before the process exits
    stderr = process.stderr.read()
    if process.wait() != 0 or len(arrivals) != expected:
        raise SystemExit(f"the CLI failed ({len(arrivals)} of {expected} rows): {stderr[-2000:]}")
    wall = time.perf_counter() - started
    counted = expected - skip
    return {
        "rows": expected,
        "failed_rows": bad,
        "startup_s": arrivals[0],
        "wall_s": wall,
        "steady": counted / (arrivals[-1] - arrivals[skip - 1]),
        "cpu_ms": 1000 * (cpu[expected] - cpu[skip]) / counted,
    }


def _cpu_seconds(process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1284, help="files in the folder (real PNGs, repeated)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", default=None, help="registry version or model folder (default: current)")
    args = p.parse_args()
    if args.quick:
        args.size, args.rounds = 96, 1
    started = time.perf_counter()
    sources = pngs_512(args.data)
    extra = ["--model", args.model] if args.model else []

    with scratch("cli") as folder:
        files = []
        for i in range(args.size):
            source = sources[i % len(sources)]
            files.append(folder / f"{i:05d}-{source.name}")
            shutil.copyfile(source, files[-1])
        limit = DecodeLimit()
        limit.rate(files[:64])  # warm the pool and the page cache
        rounds = []
        for r in range(args.rounds):
            before, cpu_before = limit.rate(files), limit.cpu_ms
            cli = run_cli(folder, len(files), extra)
            after, cpu_after = limit.rate(files), limit.cpu_ms
            reference = (before + after) / 2
            limit_cpu_ms = (cpu_before + cpu_after) / 2
            rounds.append(
                {
                    **cli,
                    "limit": reference,
                    "ratio": cli["steady"] / reference,
                    "limit_cpu_ms": limit_cpu_ms,
                    "cpu_ratio": limit_cpu_ms / cli["cpu_ms"],
                }
            )
            log(
                f"batch_cli round {r + 1}: CLI {cli['steady']:.0f} img/s steady "
                f"(startup {cli['startup_s']:.1f} s), limit {before:.0f}/{after:.0f} img/s"
            )
        limit.close()
    stages = stage_costs(sources[: 32 if args.quick else 320], args.model)
    costs = stages["cpu_ms_per_image"]
    limit_ms = costs["limit: read + decode + resize"]
    limit2_ms = costs["limit 2: decode + resize + both networks' bare inference"]
    cli_ms = sum(v for k, v in costs.items() if not k.startswith("limit") and "(ingest)" not in k)
    log(f"batch_cli: stage costs {costs}")

    ratio = median([r["ratio"] for r in rounds])
    # The second limit in images/s: the measured limit's rate scaled by the two limits' CPU cost per
    # film (both run on the same cores, threaded alike), so the CLI is compared with the decode, resize
    # and the two networks' bare inference, the work no serving path can skip.
    limit_rate = median([r["limit"] for r in rounds])
    limit2_rate = limit_rate * limit_ms / limit2_ms
    ratio2 = median([r["steady"] for r in rounds]) / limit2_rate
    emit(
        {
            "benchmark": "batch_cli",
            "machine": machine(),
            "params": {
                "files": args.size,
                "distinct_files": min(args.size, len(sources)),
                "rounds": args.rounds,
            },
            "figures": {
                "images_per_s": round(median([r["steady"] for r in rounds]), 1),
                "startup_s": round(median([r["startup_s"] for r in rounds]), 2),
                "wall_s": round(median([r["wall_s"] for r in rounds]), 2),
                "end_to_end_images_per_s": round(median([r["rows"] / r["wall_s"] for r in rounds]), 1),
                "failed_rows": max(r["failed_rows"] for r in rounds),
                "cpu_ms_per_image": round(median([r["cpu_ms"] for r in rounds]), 3),
            },
            "baseline": {
                "what": "read + cv2.imdecode + INTER_AREA resize to 128, threads on all cores",
                "images_per_s": round(median([r["limit"] for r in rounds]), 1),
                "cpu_ms_per_image": round(median([r["limit_cpu_ms"] for r in rounds]), 3),
            },
            "ratios": {
                "of_limit": round(ratio, 3),
                "rounds": [round(r["ratio"], 3) for r in rounds],
                "cpu_time_of_limit": round(median([r["cpu_ratio"] for r in rounds]), 3),
                "ceiling_from_stage_costs": round(limit_ms / cli_ms, 3),
                "of_inference_limit": round(ratio2, 3),
            },
            "limit_2": {
                "what": "decode + resize + lung network + classifier forward, each alone (stage CPU costs); "
                "images/s = the measured limit's rate x its CPU cost / this one's",
                "cpu_ms_per_image": round(limit2_ms, 3),
                "images_per_s": round(limit2_rate, 1),
            },
            "stages": {
                **stages,
                "cli_cpu_ms_per_image": round(cli_ms, 3),
                "what": "each step of the CLI's path timed apart on the same files (CPU ms per image); "
                "the ceiling is the limit's cost over their sum",
            },
            "targets": {
                "of_limit": target(ratio, 0.50, ">=", ">= 50% of the decode-and-resize-only limit"),
                "of_inference_limit": target(
                    ratio2, 0.85, ">=", ">= 85% of decode + resize + both networks' bare inference"
                ),
            },
            "seconds": round(time.perf_counter() - started, 1),
        },
        args.output,
    )


if __name__ == "__main__":
    main()
