"""The DICOM node beside a real Orthanc: a burst of films in, SRs back; against the plain CLI on the same files.

Subject: ``scripts/pacs.sh up`` (Orthanc + node on free local ports, started before timing), then a
burst of N real films (each a DX instance of its own study) uploaded into Orthanc by 4 threads, as
modalities sending at once would. Orthanc's Lua script forwards each to the node, which screens it and
stores an SR + Secondary Capture back. Per film: arrival in Orthanc (the upload's answer) -> the SR
stored in Orthanc (the node's C-STORE answered, ``delivered_at`` in its queue). Throughput: N over the
first upload to the last SR. Checked: 0 films lost (every study holds exactly one SR and one SC), 0
duplicated (no study holds two), no failed forward job in Orthanc.
Baseline, same run, same files, before and after the burst: ``python -m cxr_core predict FOLDER`` on
the .dcm files, its steady-state rate (bench/batch_cli.py's measure; model loading apart). Where the
time goes: CPU milliseconds per film of the node's process and of Orthanc's during the burst.

    .venv/bin/python bench/pacs.py            # 200 films
    .venv/bin/python bench/pacs.py --quick    # 48 films
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
from _common import ROOT, emit, log, machine, median, parser, pct, scratch, target
from batch_cli import run_cli

sys.path.insert(0, str(ROOT / "tests"))  # the PACS harness and the DX film builder of the node tests
from tests.node.pacs_harness import Pacs, film_bytes, new_uid, unseen_films  # noqa: E402


def _cpu(process) -> float:
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--films", type=int, default=200)
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for every SR")
    args = p.parse_args()
    if args.quick:
        args.films = 48  # the CLI measure skips its first batch of 32 rows
    started = time.perf_counter()
    sources = unseen_films(args.data, args.films)
    with scratch("pacs") as folder:
        films_dir = folder / "films"
        films_dir.mkdir()
        films = []
        for index in range(args.films):
            study, sop = new_uid(), new_uid()
            data = film_bytes(sources[index % len(sources)], study, sop)
            (films_dir / f"{index:04d}.dcm").write_bytes(data)
            films.append({"study": study, "sop": sop, "data": data})
        log(f"pacs: {len(films)} DX films from {min(len(sources), args.films)} unseen real X-rays")

        cli_before = run_cli(films_dir, len(films), [])
        log(f"pacs: CLI {cli_before['steady']:.1f} films/s steady (before)")

        pacs = Pacs(folder / "pacs")
        try:
            pacs.up()
            arrived: dict[str, float] = {}

            def send(film) -> None:
                pacs.upload(film["data"])
                arrived[film["sop"]] = time.time()

            processes = {name: psutil.Process(pacs.pid(name)) for name in ("node", "orthanc")}
            cpu_before = {name: _cpu(process) for name, process in processes.items()}
            burst_start = time.time()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(send, films))
            upload_s = time.time() - burst_start
            log(f"pacs: burst uploaded in {upload_s:.1f} s; waiting for the SRs")
            sops = [f["sop"] for f in films]
            rows = pacs.wait_rows(
                sops,
                lambda r: (
                    len(r) == len(films) and all(x["state"] in ("delivered", "skipped", "failed") for x in r)
                ),
                timeout=args.timeout,
                poll=0.5,
            )
            cpu_ms = {
                name: round(1000 * (_cpu(process) - cpu_before[name]) / len(films), 1)
                for name, process in processes.items()
            }
            latencies = [row["delivered_at"] - arrived[row["sop_uid"]] for row in rows if row["delivered_at"]]
            last_sr = max(row["delivered_at"] or 0 for row in rows)
            per_study = [pacs.study_instances(f["study"]) for f in films]
            lost = sum(len(found.get("SR", [])) == 0 or len(found.get("OT", [])) == 0 for found in per_study)
            duplicated = sum(
                len(found.get("SR", [])) > 1 or len(found.get("OT", [])) > 1 for found in per_study
            )
            failed_jobs = len(pacs.failed_jobs())
            states = {
                state: sum(row["state"] == state for row in rows)
                for state in ("delivered", "skipped", "failed")
            }
        finally:
            pacs.down()

        cli_after = run_cli(films_dir, len(films), [])
        log(f"pacs: CLI {cli_after['steady']:.1f} films/s steady (after)")

    node_rate = len(films) / (last_sr - burst_start)
    cli_rate = median([cli_before["steady"], cli_after["steady"]])
    p50, p95 = pct(latencies, 50), pct(latencies, 95)
    ratio = node_rate / cli_rate
    log(
        f"pacs: node {node_rate:.1f} films/s, arrival->SR p50 {p50:.2f} s p95 {p95:.2f} s; {ratio:.2f} of the CLI"
    )
    emit(
        {
            "benchmark": "pacs",
            "machine": machine(),
            "params": {"films": len(films), "upload_threads": 4, "node_batch_size": 16},
            "figures": {
                "films_per_s": round(node_rate, 2),
                "arrival_to_sr_p50_s": round(p50, 3),
                "arrival_to_sr_p95_s": round(p95, 3),
                "arrival_to_sr_max_s": round(max(latencies), 3) if latencies else None,
                "upload_s": round(upload_s, 2),
                "lost": lost,
                "duplicated": duplicated,
                "orthanc_failed_forward_jobs": failed_jobs,
                "node_states": states,
                "cpu_ms_per_film": cpu_ms,
            },
            "baseline": {
                "what": "python -m cxr_core predict on the same .dcm files, steady state, before and after",
                "films_per_s": round(cli_rate, 2),
                "before": round(cli_before["steady"], 2),
                "after": round(cli_after["steady"], 2),
                "startup_s": round(median([cli_before["startup_s"], cli_after["startup_s"]]), 2),
                "cpu_ms_per_film": round(median([cli_before["cpu_ms"], cli_after["cpu_ms"]]), 1),
            },
            "ratios": {"node_of_cli": round(ratio, 3)},
            "targets": {
                "lost": target(lost + failed_jobs + states["failed"], 0, "<=", "0 films lost"),
                "duplicated": target(duplicated, 0, "<=", "0 films duplicated"),
                "p50": target(p50, 3.0, "<=", "arrival-to-SR p50 <= 3 s"),
                "p95": target(p95, 10.0, "<=", "arrival-to-SR p95 <= 10 s"),
                "throughput": target(ratio, 0.7, ">=", "node throughput >= 0.7 of the plain CLI's"),
            },
            "seconds": round(time.perf_counter() - started, 1),
        },
        args.output,
    )


if __name__ == "__main__":
    main()
