"""Run every benchmark, one after another, and print one combined JSON document.

Each benchmark runs in its own process with the same ``--data`` and ``--quick``; one that fails is
reported with the end of its error output and makes the exit status 1, the others still run.

    .venv/bin/python bench/run_all.py                     # full sizes, a few minutes
    .venv/bin/python bench/run_all.py --quick             # tiny sizes: proves each still runs
    .venv/bin/python bench/run_all.py --only score_one train -o bench-results.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from _common import PYTHON, ROOT, emit, log, machine, parser

BENCHMARKS = ("score_one", "batch_cli", "ingest", "train", "page", "archive", "archive_celery")


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    args = p.parse_args()
    started = time.perf_counter()
    results: dict[str, dict] = {}
    for name in args.only:
        command = [PYTHON, str(Path(__file__).with_name(f"{name}.py")), "--data", str(args.data)]
        if args.quick:
            command.append("--quick")
        log(f"run_all: {name} ...")
        began = time.perf_counter()
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if run.returncode == 0:
            try:
                results[name] = json.loads(run.stdout)
            except ValueError:
                results[name] = {"error": "no JSON on standard output", "stdout_tail": run.stdout[-2000:]}
        else:
            results[name] = {"error": f"exit status {run.returncode}", "stderr_tail": run.stderr[-3000:]}
        log(
            f"run_all: {name} done in {time.perf_counter() - began:.0f} s"
            + (" (FAILED)" if "error" in results[name] else "")
        )

    targets = {
        f"{name}.{key}": value
        for name, result in results.items()
        for key, value in (result.get("targets") or {}).items()
    }
    failed = [name for name, result in results.items() if "error" in result]
    emit(
        {
            "machine": machine(),
            "quick": args.quick,
            "benchmarks": results,
            "targets": targets,
            "targets_met": sum(t["met"] for t in targets.values()),
            "targets_total": len(targets),
            "failed": failed,
            "seconds": round(time.perf_counter() - started, 1),
        },
        args.output,
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
