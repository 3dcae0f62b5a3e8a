"""The DAGs for real on the distributed engine: PostgreSQL metadata database, the CeleryExecutor with
Redis as broker, a scheduler, a dag-processor, an api-server (Airflow 3 tasks talk to its execution
API) and two ``airflow celery worker`` processes with distinct hostnames, started once for the module.
``tb_batch_screening`` must spread its mapped shards over both workers; ``tb_pipeline`` trains one epoch
on a tiny real dataset and registers into a copy of the project's registry (``models/`` is untouched).

Everything runs on this machine against the local PostgreSQL (127.0.0.1:5432, trust auth, user
postgres) and Redis (127.0.0.1:6379) services: the test creates a fresh database per run and drops it
afterwards, sends its tasks through a Celery queue of its own (deleted afterwards), and stops every
process it started (each in its own process group), also when it fails. Under ``CI=true`` a service
that does not answer fails the test (tests/tools.py ``missing()``); elsewhere it skips with the reason.

Environment knobs: ``CXR_TEST_PG`` (``host:port``, default ``127.0.0.1:5432``), ``CXR_TEST_REDIS``
(``host:port``, default ``127.0.0.1:6379``), ``CXR_TEST_REDIS_DB`` (default 11).
"""

import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from test_airflow_dag import write_params
from test_batch_dag import check_merged_output, films_folder
from tools import missing

from bench.celery_stack import celery_airflow, celery_task_ids, unavailable
from cxr_core.registry.store import Registry, sha256_file

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REDIS_DB = int(os.environ.get("CXR_TEST_REDIS_DB", "11"))
WORKERS = ("cxr-worker-1", "cxr-worker-2")
RUN_TIMEOUT_S = 300

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def celery_airflow_stack(tmp_path_factory, shared_cxr):
    if reason := unavailable():
        missing(reason)
    tmp = tmp_path_factory.mktemp("celery")
    # A registry of its own (a copy of the project's, so predict scores with the shipped model) that
    # the training DAG may promote into without touching models/.
    shutil.copytree(PROJECT_ROOT / "models", tmp / "models")
    params = write_params(
        tmp / "params.yaml", min_sensitivity=0.0, min_specificity=0.0, min_test_films=0, min_test_per_class=0
    )
    # This test is about the engine: no lung model needed (tests/test_airflow_dag.py covers the stages).
    settings = yaml.safe_load(params.read_text())
    settings.setdefault("ingest", {})["lung_check"] = False
    params.write_text(yaml.safe_dump(settings, sort_keys=False))
    with celery_airflow(
        tmp, project_python=sys.executable, redis_db=REDIS_DB, workers=WORKERS,
        CXR_DATASET_ROOTS=str(tmp_path_factory.getbasetemp()), CXR_MODELS_DIR=str(tmp / "models"),
        CXR_PARAMS_FILE=str(params),
    ) as stack:  # fmt: skip
        yield stack


def test_batch_dag_runs_on_two_celery_workers(celery_airflow_stack, tmp_path, shared_cxr):
    """The two shards run on the two workers. Both workers are free when a run starts, but the planning
    task's Celery job can still be ending on one of them when the shards are queued (Airflow acks late,
    one task a worker), and the other worker may then take both: such a run is repeated, up to three times,
    and every run must still succeed with the same merged output."""
    folder = films_folder(tmp_path, shared_cxr, normals=3, tbs=2)
    films = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".txt")
    attempts = []
    for _attempt in range(3):
        earlier = set().union(*(celery_task_ids(celery_airflow_stack.worker_log(name))[0] for name in WORKERS))
        result = celery_airflow_stack.run(
            "tb_batch_screening", {"source": str(folder), "shard_size": 3}, timeout=RUN_TIMEOUT_S
        )
        mapped = [ti for ti in result["tis"] if ti["task_id"] == "predict_shard"]
        assert [ti["map_index"] for ti in mapped] == [0, 1]
        assert all(ti["state"] == "success" for ti in result["tis"])
        assert {ti["hostname"] for ti in result["tis"]} <= set(WORKERS)
        # run() returns once every worker's Celery job has ended, read from the workers' own log lines: all
        # four tasks (plan, two shards, merge) were received and ended, so the next run finds both free
        received, ended = set(), set()
        for name in WORKERS:
            in_log, ended_in_log = celery_task_ids(celery_airflow_stack.worker_log(name))
            received, ended = received | in_log, ended | ended_in_log
        assert len(received - earlier) == len(result["tis"]) == 4 and received <= ended
        assert celery_airflow_stack.busy_workers() == []
        work = celery_airflow_stack.tmp / "work" / result["run_id"]
        check_merged_output(work, films, [folder / "batch-0" / "corrupt.png"])
        attempts.append({ti["hostname"] for ti in mapped})
        if attempts[-1] == set(WORKERS):
            break
    assert attempts[-1] == set(WORKERS), f"in {len(attempts)} runs the mapped tasks never ran on both workers: {attempts}"


def test_training_dag_runs_on_celery_workers(celery_airflow_stack, kaggle_tree):
    """tb_pipeline on the same engine: a tiny real dataset, one epoch, registered into the test's registry."""
    result = celery_airflow_stack.run(
        "tb_pipeline", {"data.path": str(kaggle_tree), "train.epochs": 1, "ingest.workers": 2}, timeout=600
    )
    tasks = {ti["task_id"]: ti for ti in result["tis"]}
    assert set(tasks) == {"data_ingestion", "model_trainer", "model_testing", "register_model"}
    assert all(ti["state"] == "success" and ti["hostname"] in WORKERS for ti in tasks.values())
    registry = Registry(celery_airflow_stack.tmp / "models")
    versions = registry.versions()
    shipped = {path.name for path in (PROJECT_ROOT / "models").glob("v*") if (path / "model.keras").is_file()}
    assert len(versions) == len(shipped) + 1  # the shipped versions and the one this run trained
    work = celery_airflow_stack.tmp / "work" / result["run_id"]
    assert sha256_file(work / "model" / "model.keras") in {meta.get("model_sha256") for meta in versions}
