"""Ingestion throughput and peak memory at N and 4N images, against decode-and-resize only.

Sets: N real X-rays (copied into a Kaggle-style ``Normal/`` + ``Tuberculosis/`` tree) and 4N, the same
plus three re-encoded copies of each with small perturbations (a brightness offset and sparse +-1
noise: different bytes, so every copy is decoded and hashed, and a near duplicate of its original).
Subject: ``cxr_core.pipeline.ingest.run_ingest`` with the ``ingest`` section of params.yaml, each run in a
fresh process (decoders imported and the lung model loaded before its clock starts, the loading reported
apart, and an empty lung cache of its own: a first ingest) whose whole process tree's RSS is sampled
every 25 ms.
Baselines, measured in the same run around each ingest: the decode-and-resize-only limit on the same
files (throughput), and the original approach, float32 images accumulated in a list, stacked and
pickled, in a fresh process likewise (memory; it runs no lung model, so its speed is not comparable).
The ingest runs the lung check and crop of params.yaml with the registry's current lung model (the one
the shipped classifier was trained with). Where the time goes: the CPU milliseconds per image of each
step, measured apart on real files of every source (``stages``), and the ratio they allow.

    .venv/bin/python bench/ingest.py               # N = all 2332 shared X-rays, 4N = 9328
    .venv/bin/python bench/ingest.py --quick
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import (
    PYTHON,
    ROOT,
    DecodeLimit,
    PeakRss,
    emit,
    labelled,
    log,
    machine,
    parser,
    scratch,
    stage_costs,
    target,
)

FOLDERS = {0: "Normal", 1: "Tuberculosis"}


def build(items: list[tuple[Path, int]], root: Path, copies: int) -> list[Path]:
    """A Kaggle-style tree: each original, plus ``copies`` perturbed re-encodings of it."""
    import cv2
    import numpy as np

    for folder in FOLDERS.values():
        (root / folder).mkdir(parents=True)

    def write(job: tuple[int, Path, int]) -> list[Path]:
        index, source, label = job
        folder = root / FOLDERS[label]
        written = [folder / f"{index:05d}-0{source.suffix}"]
        written[0].write_bytes(source.read_bytes())
        if copies:
            pixels = cv2.imdecode(np.fromfile(source, np.uint8), cv2.IMREAD_UNCHANGED)
            rng = np.random.default_rng(index)
            for copy in range(1, copies + 1):
                noisy = pixels.astype(np.int16) + (1, -1, 2)[(copy - 1) % 3]
                mask = rng.random(pixels.shape) < 0.01
                noisy[mask] += rng.integers(-1, 2, int(mask.sum()), dtype=np.int16)
                ok, data = cv2.imencode(".png", np.clip(noisy, 0, 255).astype(np.uint8))
                written.append(folder / f"{index:05d}-{copy}.png")
                written[-1].write_bytes(data.tobytes())
        return written

    with ThreadPoolExecutor(max_workers=2) as pool:
        return [
            path
            for group in pool.map(write, [(i, p, label) for i, (p, label) in enumerate(items)])
            for path in group
        ]


# ------------------------------------------------------------------------------- child processes


def preload() -> None:
    """Import the decoders and hashers before the clock starts (process start-up, as for the CLI)."""
    import cv2  # noqa: F401
    import imagehash
    import PIL.Image

    imagehash.phash(PIL.Image.new("L", (64, 64)))  # imports scipy's DCT on first use


def child_new(data: Path, out: Path) -> dict:
    import yaml

    from cxr_core.pipeline.ingest import run_ingest

    preload()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["ingest"]
    loading = time.perf_counter()
    if params["lung_check"] or params["lung_crop"]:  # start-up, as the CLI's model loading is
        from cxr_core.modelling.lungs import load_lung_model

        load_lung_model()  # loaded once per process; run_ingest gets this one
    startup_s = time.perf_counter() - loading

    started, cpu = time.perf_counter(), time.process_time()
    summary = run_ingest(data, out, params)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu,
        "images": summary["images"],
        "skipped": summary["skipped"],
        "lung_model_load_s": startup_s,
    }


def child_original(data: Path, out: Path) -> dict:
    """The original approach: float32 images in a list, stacked, pickled (same decode and preprocessing)."""
    import pickle

    import numpy as np

    from cxr_core.errors import CxrError
    from cxr_core.imaging.preprocess import to_model_input
    from cxr_core.pipeline.datasets import discover, read_record_bytes

    preload()
    started, cpu = time.perf_counter(), time.process_time()
    images, labels = [], []
    for record in discover(data).records:
        try:
            pixels = to_model_input(read_record_bytes(record)).pixels
        except CxrError:
            continue
        images.append(pixels.astype(np.float32) / 255.0)
        labels.append(record.label)
    stacked = np.stack(images)[..., None]
    out.mkdir(parents=True)
    with open(out / "dataset.pkl", "wb") as handle:
        pickle.dump((stacked, np.array(labels)), handle, protocol=pickle.HIGHEST_PROTOCOL)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu,
        "images": len(images),
        "skipped": 0,
    }


def run_child(kind: str, data: Path, out: Path) -> dict:
    """One ingest in a fresh process; its time (measured inside) and the peak RSS of its process tree."""
    # A lung cache of its own, empty: the project's work/cache (filled by any earlier ingest of the same
    # films, e.g. a LOSO run) or the N run's entries would let the 4N run skip the lung network.
    cache = out.parent / f"lung-cache-{out.name}"
    process = subprocess.Popen(
        [PYTHON, __file__, "--child", kind, str(data), str(out)],
        cwd=ROOT,
        env={**os.environ, "CXR_LUNG_CACHE_DIR": str(cache)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = PeakRss(process.pid, interval=0.025)
    sampler.start()
    stdout, stderr = process.communicate()
    peak = sampler.stop()
    if process.returncode != 0:
        raise SystemExit(f"{kind} ingest failed: {stderr[-2000:]}")
    result = json.loads(stdout)
    return {**result, "images_per_s": result["images"] / result["seconds"], "peak_rss_mb": peak / 2**20}


# ---------------------------------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        kind, data, out = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
        print(json.dumps((child_new if kind == "new" else child_original)(data, out)))
        return
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=None, help="N, real X-rays in the smaller set (default: all)")
    args = p.parse_args()
    if args.quick:
        args.size = 24
    started = time.perf_counter()
    items = labelled(args.data, args.size)
    n = len(items)

    with scratch("ingest") as tmp:
        sets = {}
        for name, copies in (("n", 0), ("4n", 3)):
            sets[name] = build(items, tmp / f"data-{name}", copies)
            log(f"ingest: built {len(sets[name])} files for {name}")
        limit = DecodeLimit()
        limit.rate(sets["n"][:32])
        results: dict[str, dict] = {}
        for name, files in sets.items():
            before = limit.rate(files)
            new = run_child("new", tmp / f"data-{name}", tmp / f"out-new-{name}")
            after = limit.rate(files)
            original = run_child("original", tmp / f"data-{name}", tmp / f"out-original-{name}")
            reference = (before + after) / 2
            results[name] = {
                "new": new,
                "original": original,
                "limit": reference,
                "of_limit": new["images_per_s"] / reference,
            }
            log(
                f"ingest {name}: {new['images']} images, {new['images_per_s']:.0f} img/s "
                f"(limit {before:.0f}/{after:.0f}), peak {new['peak_rss_mb']:.0f} MB; "
                f"original {original['images_per_s']:.0f} img/s, peak {original['peak_rss_mb']:.0f} MB"
            )
        limit.close()
    stages = stage_costs([path for path, _ in items][:: max(1, len(items) // (24 if args.quick else 320))])
    costs = stages["cpu_ms_per_image"]
    ingest_ms = sum(v for k, v in costs.items() if not k.startswith(("limit", "classifier", "result")))
    log(f"ingest: stage costs {costs}")
    # The second limit: decode + resize + the lung network's bare inference (the one network ingest
    # runs), in images/s as the measured limit's rate scaled by the two limits' CPU cost per film.
    limit2_ms = costs["limit 2: decode + resize + the lung network's bare inference"]
    limit2_scale = costs["limit: read + decode + resize"] / limit2_ms
    of_limit2 = {name: results[name]["of_limit"] / limit2_scale for name in results}

    growth = results["4n"]["new"]["peak_rss_mb"] / results["n"]["new"]["peak_rss_mb"]
    original_growth = results["4n"]["original"]["peak_rss_mb"] / results["n"]["original"]["peak_rss_mb"]

    def figures(kind: str) -> dict:
        return {
            name: {
                "images": results[name][kind]["images"],
                "images_per_s": round(results[name][kind]["images_per_s"], 1),
                "seconds": round(results[name][kind]["seconds"], 2),
                "peak_rss_mb": round(results[name][kind]["peak_rss_mb"], 1),
                "cpu_ms_per_image": round(
                    1000 * results[name][kind]["cpu_s"] / results[name][kind]["images"], 3
                ),
                "lung_model_load_s": round(results[name][kind].get("lung_model_load_s", 0.0), 2),
            }
            for name in results
        }

    emit(
        {
            "benchmark": "ingest",
            "machine": machine(),
            "params": {"n": n, "4n": len(sets["4n"]), "settings": "params.yaml ingest section"},
            "figures": figures("new"),
            "baseline": {
                "limit_images_per_s": {name: round(results[name]["limit"], 1) for name in results},
                "original": figures("original"),
            },
            "ratios": {
                "of_limit_n": round(results["n"]["of_limit"], 3),
                "of_limit_4n": round(results["4n"]["of_limit"], 3),
                "peak_rss_4n_over_n": round(growth, 3),
                "original_peak_rss_4n_over_n": round(original_growth, 3),
                "original_over_new_peak_rss_4n": round(
                    results["4n"]["original"]["peak_rss_mb"] / results["4n"]["new"]["peak_rss_mb"], 2
                ),
                "ceiling_from_stage_costs": round(costs["limit: read + decode + resize"] / ingest_ms, 3),
                "of_inference_limit_n": round(of_limit2["n"], 3),
                "of_inference_limit_4n": round(of_limit2["4n"], 3),
            },
            "limit_2": {
                "what": "decode + resize + the lung network's bare inference (stage CPU costs); images/s = "
                "the measured limit's rate x its CPU cost / this one's",
                "cpu_ms_per_image": limit2_ms,
                "images_per_s": {name: round(results[name]["limit"] * limit2_scale, 1) for name in results},
            },
            "stages": {
                **stages,
                "ingest_cpu_ms_per_image": round(ingest_ms, 3),
                "what": "each step of the ingest's path timed apart on files of every source (CPU ms per "
                "image); the ceiling is the limit's cost over their sum",
            },
            "targets": {
                "of_limit_n": target(
                    results["n"]["of_limit"], 0.50, ">=", ">= 50% of the decode-and-resize-only limit at N"
                ),
                "of_limit_4n": target(results["4n"]["of_limit"], 0.50, ">=", ">= 50% of the limit at 4N"),
                "of_inference_limit_n": target(
                    of_limit2["n"], 0.85, ">=", ">= 85% of decode + resize + the lung network's bare inference"
                ),
                "memory": target(growth, 1.2, "<=", "peak RSS at 4N within 1.2x of N"),
            },
            "seconds": round(time.perf_counter() - started, 1),
        },
        args.output,
    )


if __name__ == "__main__":
    main()
