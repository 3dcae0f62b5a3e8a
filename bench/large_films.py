"""Scoring films at a detector's size: 3,000 px PNGs one per call, beside the same films at 512 px.

Subject: ``Predictor.screen`` on one upload per call (as the Screen page and the PACS node receive
films), on the benchmarks' real 512 px PNGs upscaled to 3,000 px on their long side (bicubic, as
evaluation's own upscale check makes them) and PNG-encoded: wall time and CPU time a film, and where the
CPU goes (``_common.stage_costs``, one film per call). Baseline, in the same process and interleaved
with the subject: the same films at 512 px through the same path; and at both sizes the least any
pipeline does with a film (read, decode, area-resize: the other benchmarks' limit).

Why: every other benchmark scores 512 px films, where the networks are most of a film's cost. A
hospital's films are 2,000-3,000 px, where decoding them and bringing them down to the networks' sides
cost far more than the networks; this benchmark keeps that visible. No target (issue #23's are set on
512 px films): the figures say where the next saving lies.

    .venv/bin/python bench/large_films.py            # 40 films at each size
    .venv/bin/python bench/large_films.py --quick    # 3
"""

from __future__ import annotations

import time

from _common import decode_resize, emit, log, machine, median, parser, pngs_512, scratch, stage_costs


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=40, help="films at each size")
    p.add_argument("--model", default=None, help="registry version or model folder (default: current)")
    args = p.parse_args()
    if args.quick:
        args.size = 3
    started = time.perf_counter()

    import cv2
    import numpy as np

    from cxr_core.modelling.predictor import Predictor
    from cxr_core.pipeline.evaluate import upscaled  # evaluation's own upscale check: the same 3,000 px
    from cxr_core.registry.store import Registry

    small = pngs_512(args.data)
    small = [small[i * len(small) // args.size] for i in range(args.size)]  # spread over the sources
    with scratch("large-films") as root:
        large = []
        for path in small:
            gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            large.append(root / path.name)
            cv2.imwrite(str(large[-1]), upscaled(gray))
        shape = cv2.imread(str(large[0]), cv2.IMREAD_GRAYSCALE).shape
        megabytes = sum(path.stat().st_size for path in large) / len(large) / 1e6
        log(f"large-films: {len(large)} films at {shape[1]} x {shape[0]} px, {megabytes:.1f} MB a PNG")

        model_dir, _ = Registry().resolve_with_warning(args.model)
        predictor = Predictor(model_dir)
        uploads = {"large": [(p.name, p.read_bytes()) for p in large], "512": [(p.name, p.read_bytes()) for p in small]}
        for films in uploads.values():
            predictor.screen(films[:1])  # the first call traces what later calls reuse

        wall = {size: [] for size in uploads}
        cpu = {size: [] for size in uploads}
        limit_cpu = {size: [] for size in uploads}
        probabilities = {size: [] for size in uploads}
        paths = {"large": large, "512": small}
        for i in range(args.size):
            order = list(uploads) if i % 2 == 0 else list(uploads)[::-1]  # interleaved, each first half the time
            for size in order:
                films = uploads[size]
                t0, c0 = time.perf_counter(), time.process_time()
                item = predictor.screen([films[i]])[0]
                wall[size].append(time.perf_counter() - t0)
                cpu[size].append(time.process_time() - c0)
                if not item.ok:
                    raise SystemExit(f"{films[i][0]} at {size} px was not scored: {item.error}")
                probabilities[size].append(item.prediction.probability)
                c0 = time.process_time()
                decode_resize(paths[size][i])
                limit_cpu[size].append(time.process_time() - c0)
        log("large-films: where the CPU goes, one film per call ...")
        stages = {size: stage_costs(paths[size], args.model, batch=1)["cpu_ms_per_image"] for size in paths}

    def summary(size: str) -> dict:
        costs = stages[size]
        networks = sum(v for k, v in costs.items() if k.startswith(("lung network", "classifier + Grad-CAM")))
        # screen()'s own steps: not the limits, not ingest's hashes, not the CLI's result row
        path_ms = sum(v for k, v in costs.items() if not k.startswith(("limit", "md5", "perceptual hash", "result row")))
        return {
            "p50_ms": round(1000 * median(wall[size]), 2),
            "cpu_ms_per_film": round(1000 * float(np.mean(cpu[size])), 2),
            "stage_cpu_ms": costs,
            "networks_share_of_stages": round(networks / path_ms, 3),
        }

    subject, baseline = summary("large"), summary("512")
    limits = {size: round(1000 * float(np.mean(limit_cpu[size])), 3) for size in limit_cpu}
    dp = np.abs(np.array(probabilities["large"]) - np.array(probabilities["512"]))
    log(f"large-films: {subject['cpu_ms_per_film']:.1f} ms CPU a film at {shape[1]} px, "
        f"{baseline['cpu_ms_per_film']:.1f} ms at 512 px")  # fmt: skip
    emit(
        {
            "benchmark": "large_films",
            "machine": machine(),
            "params": {"films": args.size, "model": str(model_dir), "height_width": list(shape),
                       "png_megabytes": round(megabytes, 2), "calls": "one film per call, as uploads arrive"},
            "figures": subject,
            "baseline": {"what": "the same films at 512 px, same path, interleaved", **baseline,
                         "limit_cpu_ms_per_film": limits},
            "ratios": {
                "cpu_large_over_512": round(subject["cpu_ms_per_film"] / baseline["cpu_ms_per_film"], 2),
                "limit_of_path_large": round(limits["large"] / subject["cpu_ms_per_film"], 3),
                "limit_of_path_512": round(limits["512"] / baseline["cpu_ms_per_film"], 3),
            },
            # the upscale check's own figure (README: the shipped network reads sharpness as evidence)
            "probability_change": {"median_abs": round(float(np.median(dp)), 4), "max_abs": round(float(dp.max()), 4)},
            "targets": {},
            "seconds": round(time.perf_counter() - started, 1),
        },
        args.output,
    )  # fmt: skip


if __name__ == "__main__":
    main()
