"""Airflow 3 on the distributed engine, started on this machine for a test or a benchmark.

PostgreSQL metadata database (a fresh database, dropped afterwards), the CeleryExecutor with Redis as
broker (a database number of its own, flushed before and after), an api-server (Airflow 3 tasks talk to
its execution API), a scheduler, a dag-processor and ``airflow celery worker`` processes with distinct
hostnames, one task at a time each. Every process runs in its own process group and is stopped whole,
also when the caller fails. Shared by ``tests/test_airflow_celery.py`` (does the engine run the DAGs?)
and ``bench/archive_celery.py`` (how fast on one and on two workers?), so both start the same stack.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from bench.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_PYTHON = ROOT / "airflow-venv" / "bin" / "python"
AIRFLOW_BIN = AIRFLOW_PYTHON.parent / "airflow"
DAGS_FOLDER = ROOT / "training" / "dags"
# Settings of docker-compose.yml that change how fast a run goes, so what is measured is what deploys
# (tests/test_docker_files.py holds the two equal): a worker slot is free within 1 s of its task's end.
DEPLOYMENT_TUNING = {"AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1"}
# Celery's own log lines (celery.worker.strategy, celery.app.trace, celery.worker.request): a task
# received, and its end by task id (succeeded, raised, retry..., discarded once revoked, killed at its
# hard time limit).
CELERY_TASK_RECEIVED = re.compile(r"Task \S+\[([0-9a-f-]{36})\] received")
CELERY_TASK_ENDED = re.compile(
    r"(?:Task \S+\[([0-9a-f-]{36})\] (?!received)\w+"
    r"|Discarding revoked task: \S+\[([0-9a-f-]{36})\]"
    r"|Hard time limit \S+ exceeded for \S+\[([0-9a-f-]{36})\])"
)


def celery_task_ids(text: str) -> tuple[set[str], set[str]]:
    """The Celery task ids a worker's log shows received, and those it shows ended."""
    ended = {next(filter(None, groups)) for groups in CELERY_TASK_ENDED.findall(text)}
    return set(CELERY_TASK_RECEIVED.findall(text)), ended


PG_HOST, PG_PORT = os.environ.get("CXR_TEST_PG", "127.0.0.1:5432").rsplit(":", 1)
REDIS_HOST, REDIS_PORT = os.environ.get("CXR_TEST_REDIS", "127.0.0.1:6379").rsplit(":", 1)


class StackError(RuntimeError):
    """The stack did not start, or a run did not end in success; the message carries the logs."""


# Run with airflow-venv's python: create or drop the database; on drop, delete the stack's own queue
# from Redis (other stacks may share the Redis database: nothing else is touched).
SERVICES = textwrap.dedent(
    """
    import sys, psycopg2, redis
    action, host, port, db, redis_host, redis_port, redis_db, queue = sys.argv[1:9]
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
    if action == "drop":
        broker = redis.Redis(host=redis_host, port=int(redis_port), db=int(redis_db), socket_timeout=5)
        broker.delete(queue, "_kombu.binding." + queue)
    """
)

# Polls the metadata database until the run ends; prints the run's state, its start and end as the
# database recorded them, and its task instances.
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
        time.sleep(1)
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT task_id, map_index, state, hostname, try_number, EXTRACT(EPOCH FROM scheduled_dttm), "
            "EXTRACT(EPOCH FROM queued_dttm), EXTRACT(EPOCH FROM start_date), EXTRACT(EPOCH FROM end_date) "
            "FROM task_instance WHERE dag_id = %s AND run_id = %s ORDER BY task_id, map_index",
            (dag_id, run_id))
        times = ("scheduled", "queued", "start", "end")
        keys = ("task_id", "map_index", "state", "hostname", "try_number", *times)
        tis = [dict(zip(keys, (float(v) if k in times and v is not None else v
                              for k, v in zip(keys, r)))) for r in cursor.fetchall()]
        cursor.execute(
            "SELECT EXTRACT(EPOCH FROM queued_at), EXTRACT(EPOCH FROM start_date), EXTRACT(EPOCH FROM end_date) "
            "FROM dag_run WHERE dag_id = %s AND run_id = %s", (dag_id, run_id))
        run = dict(zip(("queued", "start", "end"), (v and float(v) for v in cursor.fetchone())))
    print(json.dumps({"state": state, "tis": tis, "run": run}))
    """
)

# Imported by each worker through AIRFLOW__CORE__HOSTNAME_CALLABLE: two workers on one machine would
# otherwise record the same hostname on their task instances.
HOSTNAME_MODULE = "import os\n\ndef hostname():\n    return os.environ['CXR_WORKER_NAME']\n"


def answers(host: str, port: str) -> bool:
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return True
    except OSError:
        return False


def unavailable() -> str | None:
    """What the stack would miss on this machine (airflow-venv/, PostgreSQL, Redis), or None: one
    check for the stack itself and for the tests that must fail (CI) or skip with the reason."""
    if not AIRFLOW_PYTHON.exists():
        return "airflow-venv/ is missing: run `bash scripts/setup_airflow.sh` (scripts/test.sh does it)"
    for what, host, port in (("PostgreSQL", PG_HOST, PG_PORT), ("Redis", REDIS_HOST, REDIS_PORT)):
        if not answers(host, port):
            return f"{what} does not answer on {host}:{port}"
    return None


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def stop_groups(processes: list[subprocess.Popen], grace_s: float = 20.0) -> None:
    """Stop started processes and everything they spawned (each its own process group), also when a
    leader has already exited: a scheduler that died leaves its task processes behind in its group.
    All are asked at once and given one shared grace period: stopped one after another, a stack's five
    processes took 8 s, most of it waiting. Never raises: one that will not stop is killed."""
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        _signal_group(process, signal.SIGKILL)  # stragglers of a group, or a leader that ignored TERM
    for process in processes:
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


def _stop_all(processes: list[tuple[str, subprocess.Popen]]) -> None:
    stop_groups([process for _, process in processes])


def _raise_on_sigterm(signum, frame):
    raise SystemExit(f"stopped by signal {signum}")


def _services(action: str, database: str, redis_db: int, queue: str) -> None:
    done = subprocess.run(
        [str(AIRFLOW_PYTHON), "-c", SERVICES, action, PG_HOST, PG_PORT, database,
         REDIS_HOST, REDIS_PORT, str(redis_db), queue],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        raise StackError(f"{action} {database}: {done.stderr[-2000:]}")


class CeleryAirflow:
    """A running stack: add workers, trigger a DAG and wait for its run (state and task instances)."""

    def __init__(self, env: dict, tmp: Path, dsn: str, queue: str, stack: ExitStack):
        self.env, self.tmp, self.dsn, self.queue, self._stack = env, tmp, dsn, queue, stack
        self.logs = tmp / "logs"
        self.started: list[tuple[str, subprocess.Popen]] = []
        self.workers: list[str] = []

    def diagnostics(self) -> str:
        parts = []
        for path in sorted(self.logs.rglob("*.log")):
            parts.append(f"--- {path.relative_to(self.logs)}\n" + path.read_text(errors="replace")[-2500:])
        return "\n".join(parts)[-15000:]

    def airflow(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(AIRFLOW_BIN), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def start(self, name: str, *args: str, **extra: str) -> None:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 (closed by the ExitStack)
        self._stack.callback(log.close)
        process = subprocess.Popen(
            [str(AIRFLOW_BIN), *args],
            env={**self.env, **extra},
            cwd=self.tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped whole, with its children
        )
        self.started.append((name, process))

    def check_running(self) -> None:
        for name, process in self.started:
            if process.poll() is not None:
                raise StackError(f"{name} exited early:\n{self.diagnostics()}")

    def add_workers(self, *names: str, timeout: float = 180) -> None:
        """Start Celery workers and wait until each listens: a task queued earlier would all go to the
        first worker up. One task at a time each, so two shards need two workers; only this stack's
        queue; no log server (it would take the fixed port 8793 on every interface)."""
        for name in names:
            self.workers.append(name)
            self.start(
                name, "celery", "worker", "--celery-hostname", f"{name}@%h", "--concurrency", "1",
                "--queues", self.queue, "--skip-serve-logs",
                AIRFLOW__CORE__HOSTNAME_CALLABLE="cxr_stack_hostname.hostname",
                CXR_WORKER_NAME=name,
                PYTHONPATH=str(self.tmp / "hostmod"),
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not all("ready." in (self.logs / f"{name}.log").read_text(errors="replace") for name in names):
            self.check_running()
            if time.monotonic() > deadline:
                raise StackError(f"the Celery workers did not start:\n{self.diagnostics()}")
            time.sleep(1)

    def busy_workers(self) -> list[str]:
        """Workers with a Celery task received and not yet ended, read from their logs. A run is a success
        in the database once its last task reported its state, while that task's Celery job is still
        ending (the supervisor's last calls, the process's exit): on a loaded machine long enough that the
        next run's first shard found that worker busy and the other took both shards."""
        busy = []
        for name in self.workers:
            received, ended = celery_task_ids(self.worker_log(name))
            if received - ended:
                busy.append(name)
        return busy

    def worker_log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_until_idle(self, hosts: set[str], timeout: float = 120) -> None:
        """Wait until no worker has a Celery job still ending. ``hosts``: the workers the run's tasks ran
        on; one whose log shows no task received cannot be told idle from busy, which is an error rather
        than a wait that silently does nothing."""
        unreadable = sorted(h for h in hosts if h in self.workers and not celery_task_ids(self.worker_log(h))[0])
        if unreadable:
            raise StackError(f"no Celery task lines in the logs of {unreadable}:\n{self.diagnostics()}")
        deadline = time.monotonic() + timeout
        while busy := self.busy_workers():
            self.check_running()
            if time.monotonic() > deadline:
                raise StackError(f"workers {busy} still busy {timeout:.0f} s after the run:\n{self.diagnostics()}")
            time.sleep(0.2)

    def run(self, dag_id: str, conf: dict, timeout: float) -> dict:
        """Trigger one run and wait for it. Raises StackError unless it ends in success, with the
        processes' logs, since a failed run on a distributed engine is otherwise hard to place."""
        run_id = f"cxr_stack_{secrets.token_hex(4)}"
        deadline = time.monotonic() + 180  # the DAG can be triggered once the dag-processor stored it
        while True:
            self.check_running()
            triggered = self.airflow("dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps(conf))
            if triggered.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise StackError(f"could not trigger {dag_id}:\n{triggered.stderr[-2000:]}")
            time.sleep(3)
        began = time.monotonic()
        waited = subprocess.run(
            [str(AIRFLOW_PYTHON), "-c", WAIT_FOR_RUN, self.dsn, dag_id, run_id, str(timeout)],
            capture_output=True, text=True, timeout=timeout + 60,
        )  # fmt: skip
        if waited.returncode != 0:
            raise StackError(waited.stderr[-3000:])
        result = json.loads(waited.stdout.strip().splitlines()[-1])
        result["run_id"], result["waited_s"] = run_id, time.monotonic() - began
        # From the run's creation to its success as the metadata database recorded them, the clock of its
        # task instances: ``waited_s`` starts only once the trigger command has exited, which on a loaded
        # machine can be after the shard began, so a run could look shorter than its own shard. The two
        # differ both ways: this one counts the time until the trigger command exits and leaves out the
        # waiting script's polling (up to 1 s after the run ended), which ``waited_s`` counts.
        run = result["run"]
        if result["state"] == "success":
            if run.get("end") is None:
                raise StackError(f"{dag_id} succeeded without an end time in the database: {json.dumps(run)}")
            result["trigger_to_success_s"] = run["end"] - (run["queued"] or run["start"])
        # standard error: a benchmark's standard output is its JSON document
        print(f"{dag_id} on Celery: {result['state']} after {result['waited_s']:.0f} s", file=sys.stderr)
        if result["state"] != "success":
            raise StackError(f"{json.dumps(result, indent=1)}\n{self.diagnostics()}")
        # the next run finds every worker free, as a nightly archive would
        self.wait_until_idle({ti["hostname"] for ti in result["tis"]})
        return result


@contextmanager
def celery_airflow(
    tmp: Path, *, project_python: str, redis_db: int, workers: tuple[str, ...] = (), **cxr_env: str
) -> Iterator[CeleryAirflow]:
    """The whole stack in ``tmp`` (home, logs, work), torn down on exit, also on SIGTERM (a timed-out
    benchmark must not leave Airflow running with a database and a queue behind). ``cxr_env`` are CXR_*
    settings for the tasks (``CXR_MODELS_DIR``, ``CXR_PARAMS_FILE``, ``CXR_DATASET_ROOTS``...); the
    caller's own CXR_* environment is not passed on, so the tasks use nothing of the caller's by accident.
    The stack's tasks go to a Celery queue of its own: another stack on the same Redis database (a test
    and a benchmark at once) neither takes its tasks nor loses its own."""
    missing = unavailable()
    if missing:
        raise StackError(missing)
    token = f"{os.getpid()}_{secrets.token_hex(3)}"
    database, queue = f"cxr_airflow_{token}", f"cxr_{token}"
    dsn = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{database}"
    (tmp / "logs").mkdir(parents=True, exist_ok=True)
    (tmp / "hostmod").mkdir(exist_ok=True)
    (tmp / "hostmod" / "cxr_stack_hostname.py").write_text(HOSTNAME_MODULE)
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CXR_", "PYTHONPATH"))}
    env.update(
        AIRFLOW_HOME=str(tmp / "airflow-home"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_FOLDER),
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
        AIRFLOW__CORE__PARALLELISM="4",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/{database}",
        AIRFLOW__CELERY__BROKER_URL=f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}",
        AIRFLOW__CELERY__RESULT_BACKEND=f"db+postgresql://postgres@{PG_HOST}:{PG_PORT}/{database}",
        AIRFLOW__CELERY__WORKER_CONCURRENCY="1",  # one task at a time each: two shards need two workers
        AIRFLOW__OPERATORS__DEFAULT_QUEUE=queue,
        AIRFLOW__API__PORT=str(api_port),
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{api_port}/execution/",
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32),  # shared by api-server and workers
        AIRFLOW__API__SECRET_KEY=secrets.token_urlsafe(32),
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
        **DEPLOYMENT_TUNING,
        AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(tmp / "logs" / "tasks"),
        CXR_PROJECT_PYTHON=project_python,
        CXR_AIRFLOW_WORK_DIR=str(tmp / "work"),
        CXR_LUNG_CACHE_DIR=str(tmp / "lung-cache"),  # never the project's work/
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env.update(cxr_env)
    previous_handler = signal.getsignal(signal.SIGTERM)
    with ExitStack() as stack:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_on_sigterm)
            stack.callback(signal.signal, signal.SIGTERM, previous_handler)
        stack.callback(_services, "drop", database, redis_db, queue)  # also after a half-done create
        _services("create", database, redis_db, queue)
        running = CeleryAirflow(env, tmp, dsn, queue, stack)
        stack.callback(_stop_all, running.started)
        migrated = running.airflow("db", "migrate", timeout=300)
        if migrated.returncode != 0:
            raise StackError(migrated.stdout[-3000:] + migrated.stderr[-3000:])
        running.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(api_port))
        running.start("scheduler", "scheduler")
        running.start("dag-processor", "dag-processor")
        if workers:  # all listening before anything is queued (else the first could take every shard)
            running.add_workers(*workers)
        yield running
