"""Archive screening throughput: the ``tb_batch_screening`` DAG's mapped tasks against the plain batch CLI.

Subject: one run of the DAG with ``dag.test()`` in airflow-venv/ (a throw-away ``AIRFLOW_HOME`` with
SQLite; ``airflow db migrate`` is done first and not timed). ``dag.test()`` runs the mapped
``predict_shard`` tasks one after another in one process, as a LocalExecutor with one slot would, so
the figure is the single-worker throughput with the DAG's own costs: planning, one TensorFlow + model
start-up per shard, the atomic shard outputs and the merge. The timed run follows an untimed one on a
few films in the same process: the first task a fresh Airflow process runs pays about 3 s of imports
(``first_run_plan_and_merge_s``), once per worker, as a long-lived LocalExecutor or Celery worker does,
not once per archive (bench/archive_celery.py judges its warm worker the same way).
Baseline, on the same films right before: ``python -m cxr_core predict FOLDER --format jsonl`` (one
process, one start-up), timed end to end and split into start-up and steady per-film rate.

From the two the script derives the per-shard start-up cost and the per-film cost, and the model for
N workers that docs/airflow-docker.md explains: ``wall(N) = plan + ceil(shards / N) * (startup +
shard_size * per_film) + merge`` (films per second = films / wall(N)).

    .venv/bin/python bench/archive.py            # 2,000 films (real 512x512 PNGs), the DAG's own shards
    .venv/bin/python bench/archive.py --quick    # 48 films
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

from _common import PYTHON, ROOT, emit, log, machine, parser, pngs_512, scratch, target
from batch_cli import CLI_BATCH, run_cli

AIRFLOW_PYTHON = ROOT / "airflow-venv" / "bin" / "python"
DAG_FILE = ROOT / "training" / "dags" / "tb_batch_screening.py"
PREFIX = "ARCHIVE_BENCH "
WARM_UP_FILMS = 8  # the untimed first run: as for the Celery workers, a worker's one-time start is not per archive

RUNNER = textwrap.dedent(
    """
    import importlib.util, json, sys, time
    spec = importlib.util.spec_from_file_location("tb_batch_bench", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from airflow import settings
    settings.configure_orm()
    first = [module.tb_batch_screening_dag.test(run_conf=json.loads(sys.argv[4]))] if len(sys.argv) > 4 else []
    started = time.perf_counter()
    run = module.tb_batch_screening_dag.test(run_conf=json.loads(sys.argv[2]))
    wall = time.perf_counter() - started
    from sqlalchemy import select
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    def tasks_of(run_id):
        with create_session() as session:
            tis = session.scalars(select(TaskInstance).where(TaskInstance.run_id == run_id)).all()
            return [{"task_id": ti.task_id, "map_index": ti.map_index, "state": str(ti.state),
                     "seconds": (ti.end_date - ti.start_date).total_seconds()} for ti in tis]
    print(sys.argv[3] + json.dumps({"state": str(run.state), "run_id": run.run_id, "wall_s": wall,
                                    "tasks": tasks_of(run.run_id),
                                    "first_run_tasks": [t for r in first for t in tasks_of(r.run_id)],
                                    "first_run_states": [str(r.state) for r in first]}), flush=True)
    """
)


def airflow_env(home: Path, work: Path, data_root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CXR_AIRFLOW", "PYTHONPATH"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(DAG_FILE.parent),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        CXR_PROJECT_PYTHON=PYTHON,
        CXR_AIRFLOW_WORK_DIR=str(work),
        CXR_DATASET_ROOTS=str(data_root),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return env


def run_dag(folder: Path, shard_size: int, workers: int, scratch_dir: Path, warm_up: Path | None = None) -> dict:
    """One timed ``dag.test()`` run; with ``warm_up``, after an untimed run on that small folder in the same
    process (the first task a fresh Airflow process runs pays its imports once, about 3 s)."""
    home, work = scratch_dir / "airflow-home", scratch_dir / "work"
    env = airflow_env(home, work, folder.parent)
    migrated = subprocess.run(
        [str(AIRFLOW_PYTHON.parent / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True
    )
    if migrated.returncode != 0:
        raise SystemExit(f"airflow db migrate failed: {migrated.stderr[-2000:]}")
    conf = json.dumps({"source": str(folder), "shard_size": shard_size, "workers": workers})
    warm_conf = [json.dumps({"source": str(warm_up), "shard_size": 0, "workers": 1})] if warm_up else []
    done = subprocess.run(
        [str(AIRFLOW_PYTHON), "-c", RUNNER, str(DAG_FILE), conf, PREFIX, *warm_conf],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(PREFIX)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"dag.test() failed: {(done.stdout + done.stderr)[-3000:]}")
    result = json.loads(lines[-1][len(PREFIX) :])
    if result["state"] != "success" or any(state != "success" for state in result["first_run_states"]):
        raise SystemExit(f"the DAG run ended {result['state']} (first run: {result['first_run_states']}): "
                         f"{(done.stdout + done.stderr)[-3000:]}")  # fmt: skip
    # the timed run's folder: written after the warm-up's (the DAG names folders after sanitised run ids)
    latest = max(work.glob("*/summary.json"), key=lambda path: path.stat().st_mtime_ns)
    summary = json.loads(latest.read_text())
    result["films"], result["unreadable"] = summary["films"], summary["unreadable"]
    return result


def archive_folder(root: Path, sources: list[Path], size: int) -> Path:
    """``size`` real films (the sources repeated) in ``root/archive``, and a first predict run on one of
    them to warm the page cache (TensorFlow's libraries, the model): neither side pays a cold start."""
    folder = root / "archive"
    folder.mkdir()
    for i in range(size):
        source = sources[i % len(sources)]
        shutil.copyfile(source, folder / f"{i:05d}-{source.name}")
    first = folder / sorted(os.listdir(folder))[0]
    subprocess.run([PYTHON, "-m", "cxr_core", "predict", str(first)], cwd=ROOT, capture_output=True)
    return folder


def warm_up_folder(root: Path, folder: Path, films: int) -> Path:
    """``root/warm-up`` with the first ``films`` of the archive: a small untimed run's input."""
    warm_up = root / "warm-up"
    warm_up.mkdir()
    for film in sorted(folder.iterdir())[:films]:
        shutil.copyfile(film, warm_up / film.name)
    return warm_up


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    # An archive, not a folder: Airflow's own cost per run (planning, merging, starting a task: about 8 s
    # on the idle machine, 80 s under load) is fixed, so on 400 films it alone held the ratio near 0.5.
    p.add_argument("--size", type=int, default=2000, help="films in the archive (real PNGs, repeated)")
    p.add_argument(
        "--shard-size",
        type=int,
        default=0,
        help="films per shard (0: the DAG's default, one shard per worker)",
    )
    p.add_argument("--workers", type=int, default=1, help="the DAG's workers param (dag.test() has one slot)")
    args = p.parse_args()
    if args.quick:
        args.size = 48  # above one CLI batch (32 rows): the steady rate needs two
        args.workers = max(args.workers, 2)  # two shards of 24: the per-shard start-up is still measured
    if not AIRFLOW_PYTHON.exists():
        raise SystemExit("airflow-venv/ is missing: run bash scripts/setup_airflow.sh")
    started = time.perf_counter()
    sources = pngs_512(args.data)

    with scratch("archive") as root:
        folder = archive_folder(root, sources, args.size)
        log(f"archive: plain CLI on {args.size} films ...")
        cli = run_cli(folder, args.size, [])
        log(f"archive: CLI {cli['wall_s']:.1f} s (start-up {cli['startup_s']:.1f} s)")
        log(f"archive: DAG with shard_size {args.shard_size} (0: automatic), workers {args.workers} ...")
        warm_up = warm_up_folder(root, folder, WARM_UP_FILMS)
        with tempfile.TemporaryDirectory(dir=root) as dag_dir:
            dag = run_dag(folder, args.shard_size, args.workers, Path(dag_dir), warm_up)
        log(f"archive: DAG {dag['wall_s']:.1f} s")

    if dag["films"] != args.size or dag["unreadable"] or cli["failed_rows"]:
        raise SystemExit(f"incomplete: DAG {dag['films']} films, CLI {cli['failed_rows']} failed rows")
    shards = [t for t in dag["tasks"] if t["task_id"] == "predict_shard"]
    other_s = sum(t["seconds"] for t in dag["tasks"] if t["task_id"] != "predict_shard")
    first_other_s = sum(t["seconds"] for t in dag["first_run_tasks"] if t["task_id"] != "predict_shard")
    # The CLI's first row arrives once its first batch is scored: what follows is the per-film cost.
    per_film_s = (cli["wall_s"] - cli["startup_s"]) / (args.size - CLI_BATCH)
    cli_startup_s = max(0.0, cli["startup_s"] - CLI_BATCH * per_film_s)
    shard_s = [t["seconds"] for t in shards]
    # A shard's time beyond scoring its films: process start, TensorFlow, the model, Airflow's task start.
    films_per_shard = args.size / len(shards)
    startup_s = max(0.0, sum(shard_s) / len(shards) - films_per_shard * per_film_s)
    dag_rate = args.size / dag["wall_s"]
    cli_rate = args.size / cli["wall_s"]

    def projected(workers: int) -> float:
        """Films/s on ``workers`` separate slots, shards as the DAG's default plans them for that many."""
        size = args.shard_size or math.ceil(args.size / workers)
        waves = math.ceil(math.ceil(args.size / size) / workers)
        return args.size / (other_s + waves * (startup_s + size * per_film_s))

    emit(
        {
            "benchmark": "archive",
            "machine": machine(),
            "params": {
                "films": args.size,
                "shard_size": args.shard_size or "automatic (one shard per worker)",
                "workers": args.workers,
                "shards": len(shards),
                "executor": "dag.test(): mapped tasks one after another (one LocalExecutor slot)",
            },
            "figures": {
                "dag_films_per_s": round(dag_rate, 2),
                "dag_wall_s": round(dag["wall_s"], 3),
                "shard_seconds": [round(s, 1) for s in shard_s],
                "plan_and_merge_s": round(other_s, 3),
                # the same tasks in the process's first run (the warm-up): what a new worker pays once
                "first_run_plan_and_merge_s": round(first_other_s, 3),
                "per_shard_startup_s": round(startup_s, 1),
                "per_film_ms": round(1000 * per_film_s, 1),
            },
            "baseline": {
                "what": "python -m cxr_core predict FOLDER --format jsonl, one process",
                "cli_films_per_s": round(cli_rate, 2),
                "cli_wall_s": round(cli["wall_s"], 3),
                "cli_first_row_s": round(cli["startup_s"], 1),
                "cli_startup_s": round(cli_startup_s, 1),
            },
            "ratios": {
                "dag_over_cli": round(dag_rate / cli_rate, 3),
                # a fresh process's run: the timed run with the first run's planning and merge instead of its own
                "dag_over_cli_first_run_estimated": round(
                    args.size / (dag["wall_s"] + first_other_s - other_s) / cli_rate, 3
                ),
                "projected_films_per_s": {str(n): round(projected(n), 2) for n in (1, 2, 4, 8)},
            },
            "targets": {
                "dag_over_cli": target(
                    dag_rate / cli_rate, 0.8, ">=", ">= 80% of the plain CLI on one worker"
                )
            },
            "seconds": round(time.perf_counter() - started, 1),
        },
        args.output,
    )


if __name__ == "__main__":
    main()
