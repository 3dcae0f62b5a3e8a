"""The DAGs for real on the distributed engine: PostgreSQL metadata database, the CeleryExecutor with
Redis as broker, a scheduler, a dag-processor, an api-server (Airflow 3 tasks talk to its execution
API) and two ``airflow celery worker`` processes with distinct hostnames, started once for the module.
``tb_batch_screening`` must spread its mapped shards over both workers; ``tb_pipeline`` trains one epoch
on a tiny real dataset and registers into a copy of the project's registry (``models/`` is untouched).

Everything runs on this machine against the local PostgreSQL (127.0.0.1:5432, trust auth, user
postgres) and Redis (127.0.0.1:6379) services: the test creates a fresh database per run and drops it
afterwards, uses a Redis database number of its own (flushed before and after), and stops every
process it started (each in its own process group), also when it fails. Under ``CI=true`` a service
that does not answer fails the test (tests/tools.py ``missing()``); elsewhere it skips with the reason.

Environment knobs: ``CXR_TEST_PG`` (``host:port``, default ``127.0.0.1:5432``), ``CXR_TEST_REDIS``
(``host:port``, default ``127.0.0.1:6379``), ``CXR_TEST_REDIS_DB`` (default 11).
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml
from test_airflow_dag import AIRFLOW_PYTHON, write_params
from test_batch_dag import check_merged_output, films_folder
from tools import missing

from cxr_core.registry.store import Registry, sha256_file

PROJECT_ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_BIN = AIRFLOW_PYTHON.parent / "airflow"
DAGS_FOLDER = PROJECT_ROOT / "training" / "dags"
PG_HOST, PG_PORT = os.environ.get("CXR_TEST_PG", "127.0.0.1:5432").rsplit(":", 1)
REDIS_HOST, REDIS_PORT = os.environ.get("CXR_TEST_REDIS", "127.0.0.1:6379").rsplit(":", 1)
REDIS_DB = int(os.environ.get("CXR_TEST_REDIS_DB", "11"))
WORKERS = ("cxr-worker-1", "cxr-worker-2")
RUN_TIMEOUT_S = 300

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.timeout(900)]

# Run with airflow-venv's python: create or drop the test's database, flush its Redis database.
SERVICES = textwrap.dedent(
    """
    import sys, psycopg2, redis
    action, host, port, db, redis_host, redis_port, redis_db = sys.argv[1:8]
    connection = psycopg2.connect(host=host, port=int(port), user="postgres", dbname="postgres",
                                  connect_timeout=5)
    connection.autocommit = True
    with connection.cursor() as cursor:
        if action == "create":
            cursor.execute(f'CREATE DATABASE "{db}"')
        else:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
            cursor.execute(f'DROP DATABASE IF EXISTS "{db}"')
    connection.close()
    redis.Redis(host=redis_host, port=int(redis_port), db=int(redis_db), socket_timeout=5).flushdb()
    """
)

# Polls the metadata database until the run ends; prints the run's state and its task instances.
WAIT_FOR_RUN = textwrap.dedent(
    """
    import json, sys, time, psycopg2
    dsn, dag_id, run_id, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", (dag_id, run_id))
            row = cursor.fetchone()
            state = row and row[0]
            if state in ("success", "failed"):
                break
        time.sleep(3)
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT task_id, map_index, state, hostname, try_number FROM task_instance "
            "WHERE dag_id = %s AND run_id = %s ORDER BY task_id, map_index", (dag_id, run_id))
        tis = [dict(zip(("task_id", "map_index", "state", "hostname", "try_number"), r))
               for r in cursor.fetchall()]
    print(json.dumps({"state": state, "tis": tis}))
    """
)

# Imported by each worker through AIRFLOW__CORE__HOSTNAME_CALLABLE: two workers on one machine would
# otherwise record the same hostname on their task instances.
HOSTNAME_MODULE = "import os\n\ndef hostname():\n    return os.environ['CXR_TEST_WORKER_NAME']\n"


def answers(host: str, port: str) -> bool:
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def services(action: str, database: str) -> None:
    done = subprocess.run(
        [str(AIRFLOW_PYTHON), "-c", SERVICES, action, PG_HOST, PG_PORT, database,
         REDIS_HOST, REDIS_PORT, str(REDIS_DB)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, f"{action} {database}: {done.stderr[-2000:]}"


def stop_group(process: subprocess.Popen) -> None:
    """Stop a started process and everything it spawned (its own process group)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


class CeleryAirflow:
    """A running stack: trigger a DAG and wait for its run (state and task instances, from PostgreSQL)."""

    def __init__(self, env: dict, tmp: Path, dsn: str, started: list, diagnostics):
        self.env, self.tmp, self.dsn, self.started, self.diagnostics = env, tmp, dsn, started, diagnostics

    def airflow(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(AIRFLOW_BIN), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def run(self, dag_id: str, conf: dict, timeout: float) -> dict:
        run_id = f"celery_test_{secrets.token_hex(4)}"
        deadline = time.monotonic() + 180  # the DAG can be triggered once the dag-processor stored it
        while True:
            for name, process in self.started:
                assert process.poll() is None, f"{name} exited early:\n{self.diagnostics()}"
            triggered = self.airflow(
                "dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps(conf)
            )
            if triggered.returncode == 0:
                break
            assert time.monotonic() < deadline, f"could not trigger:\n{triggered.stderr[-2000:]}"
            time.sleep(5)
        began = time.monotonic()
        waited = subprocess.run(
            [str(AIRFLOW_PYTHON), "-c", WAIT_FOR_RUN, self.dsn, dag_id, run_id, str(timeout)],
            capture_output=True, text=True, timeout=timeout + 60,
        )  # fmt: skip
        assert waited.returncode == 0, waited.stderr[-3000:]
        result = json.loads(waited.stdout.strip().splitlines()[-1])
        print(f"{dag_id} on Celery: {result['state']} after {time.monotonic() - began:.0f} s")
        assert result["state"] == "success", f"{json.dumps(result, indent=1)}\n{self.diagnostics()}"
        result["run_id"] = run_id
        return result


@pytest.fixture(scope="module")
def celery_airflow(tmp_path_factory, shared_cxr):
    if not AIRFLOW_PYTHON.exists():
        missing("airflow-venv/ is missing: run `bash scripts/setup_airflow.sh` (scripts/test.sh does it)")
    if not answers(PG_HOST, PG_PORT):
        missing(f"PostgreSQL does not answer on {PG_HOST}:{PG_PORT}")
    if not answers(REDIS_HOST, REDIS_PORT):
        missing(f"Redis does not answer on {REDIS_HOST}:{REDIS_PORT}")

    tmp = tmp_path_factory.mktemp("celery")
    database = f"cxr_airflow_test_{os.getpid()}_{secrets.token_hex(3)}"
    dsn = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{database}"
    home = tmp / "airflow-home"
    logs = tmp / "logs"
    logs.mkdir()
    (tmp / "hostmod").mkdir()
    (tmp / "hostmod" / "cxr_test_hostname.py").write_text(HOSTNAME_MODULE)
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
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CXR_", "PYTHONPATH"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_FOLDER),
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
        AIRFLOW__CORE__PARALLELISM="4",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/{database}",
        AIRFLOW__CELERY__BROKER_URL=f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}",
        AIRFLOW__CELERY__RESULT_BACKEND=f"db+postgresql://postgres@{PG_HOST}:{PG_PORT}/{database}",
        AIRFLOW__CELERY__WORKER_CONCURRENCY="1",  # one task at a time each: two shards need both
        AIRFLOW__API__PORT=str(api_port),
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{api_port}/execution/",
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32),  # shared by api-server and workers
        AIRFLOW__API__SECRET_KEY=secrets.token_urlsafe(32),
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
        AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(logs / "tasks"),
        CXR_PROJECT_PYTHON=sys.executable,
        CXR_AIRFLOW_WORK_DIR=str(tmp / "work"),
        CXR_DATASET_ROOTS=str(tmp_path_factory.getbasetemp()),
        CXR_MODELS_DIR=str(tmp / "models"),
        CXR_PARAMS_FILE=str(params),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    started: list[tuple[str, subprocess.Popen]] = []

    def diagnostics() -> str:
        parts = []
        for path in sorted(logs.rglob("*.log")):
            parts.append(f"--- {path.relative_to(logs)}\n" + path.read_text(errors="replace")[-2500:])
        return "\n".join(parts)[-15000:]

    services("drop", database)
    services("create", database)
    with ExitStack() as stack:
        stack.callback(services, "drop", database)
        stack.callback(lambda: [stop_group(process) for _, process in reversed(started)])

        def start(name: str, *args: str, **extra: str) -> None:
            log = open(logs / f"{name}.log", "w")  # noqa: SIM115 (closed by the ExitStack)
            stack.callback(log.close)
            process = subprocess.Popen(
                [str(AIRFLOW_BIN), *args],
                env={**env, **extra},
                cwd=tmp,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped whole, with its children
            )
            started.append((name, process))

        stack_api = CeleryAirflow(env, tmp, dsn, started, diagnostics)
        migrated = stack_api.airflow("db", "migrate", timeout=300)
        assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
        start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(api_port))
        start("scheduler", "scheduler")
        start("dag-processor", "dag-processor")
        for name in WORKERS:
            start(
                name, "celery", "worker", "--celery-hostname", f"{name}@%h", "--concurrency", "1",
                AIRFLOW__CORE__HOSTNAME_CALLABLE="cxr_test_hostname.hostname",
                CXR_TEST_WORKER_NAME=name,
                PYTHONPATH=str(tmp / "hostmod"),
            )  # fmt: skip
        # Both workers listen before anything is queued (else the first one could take every shard).
        deadline = time.monotonic() + 180
        while not all("ready." in (logs / f"{name}.log").read_text(errors="replace") for name in WORKERS):
            for name, process in started:
                assert process.poll() is None, f"{name} exited early:\n{diagnostics()}"
            assert time.monotonic() < deadline, f"the Celery workers did not start:\n{diagnostics()}"
            time.sleep(2)
        yield stack_api


def test_batch_dag_runs_on_two_celery_workers(celery_airflow, tmp_path, shared_cxr):
    folder = films_folder(tmp_path, shared_cxr, normals=3, tbs=2)
    films = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".txt")
    result = celery_airflow.run(
        "tb_batch_screening", {"source": str(folder), "shard_size": 3}, timeout=RUN_TIMEOUT_S
    )
    mapped = [ti for ti in result["tis"] if ti["task_id"] == "predict_shard"]
    assert [ti["map_index"] for ti in mapped] == [0, 1]
    assert all(ti["state"] == "success" for ti in result["tis"])
    hosts = {ti["hostname"] for ti in mapped}
    assert hosts == set(WORKERS), f"mapped tasks ran on {hosts}, not on both workers"
    assert {ti["hostname"] for ti in result["tis"]} <= set(WORKERS)
    work = celery_airflow.tmp / "work" / result["run_id"]
    check_merged_output(work, films, [folder / "batch-0" / "corrupt.png"])


def test_training_dag_runs_on_celery_workers(celery_airflow, kaggle_tree):
    """tb_pipeline on the same engine: a tiny real dataset, one epoch, registered into the test's registry."""
    result = celery_airflow.run(
        "tb_pipeline", {"data.path": str(kaggle_tree), "train.epochs": 1, "ingest.workers": 2}, timeout=600
    )
    tasks = {ti["task_id"]: ti for ti in result["tis"]}
    assert set(tasks) == {"data_ingestion", "model_trainer", "model_testing", "register_model"}
    assert all(ti["state"] == "success" and ti["hostname"] in WORKERS for ti in tasks.values())
    registry = Registry(celery_airflow.tmp / "models")
    versions = registry.versions()
    shipped = {path.name for path in (PROJECT_ROOT / "models").glob("v*") if (path / "model.keras").is_file()}
    assert len(versions) == len(shipped) + 1  # the shipped versions and the one this run trained
    work = celery_airflow.tmp / "work" / result["run_id"]
    assert sha256_file(work / "model" / "model.keras") in {meta.get("model_sha256") for meta in versions}
