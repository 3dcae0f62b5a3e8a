"""What the project's two DAGs (``tb_pipeline`` and ``tb_batch_screening``) share: where the project and
its environment are, one folder per run, and running ``python -m ...`` in the project environment.

Standard library only: this module is imported when the dag-processor parses the DAG files, and in the
task processes (LocalExecutor or Celery workers), which run in Airflow's own environment.

Environment (read at import, cheap):
``CXR_PROJECT_ROOT`` project folder (default: two levels above this file) ·
``CXR_PROJECT_PYTHON`` interpreter of the project environment (default ``<root>/.venv/bin/python``) ·
``CXR_AIRFLOW_WORK_DIR`` where each run keeps its outputs (default ``<root>/work/airflow``).
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

PROJECT_ROOT = Path(os.environ.get("CXR_PROJECT_ROOT") or Path(__file__).resolve().parents[2])
PROJECT_PYTHON = os.environ.get("CXR_PROJECT_PYTHON") or str(PROJECT_ROOT / ".venv" / "bin" / "python")
WORK_ROOT = Path(os.environ.get("CXR_AIRFLOW_WORK_DIR") or PROJECT_ROOT / "work" / "airflow")

# What both DAGs share: triggered on demand (never on a schedule), a day's bound, two retries a minute apart.
ON_DEMAND = {
    "schedule": None,
    "catchup": False,
    "dagrun_timeout": timedelta(hours=12),
    "default_args": {"retries": 2, "retry_delay": timedelta(minutes=1)},
}

LOG_TAIL_LINES = 40  # lines of a failed stage's output repeated in the error message
LOG_LINE_CHARS = 2000  # longer lines are cut before they reach the task log


def run_dir(run_id: str) -> Path:
    """One folder per DAG run; a cleared and re-run task writes into the same place."""
    return WORK_ROOT / re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)


def read_json(path: Path):
    import json

    return json.loads(Path(path).read_text())


def write_atomically(path: Path, text: str) -> None:
    """Write a whole file or nothing: a temporary file beside it, then ``os.replace``.

    A reader (or a retried task) sees the previous file or the complete new one, never half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(partial, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def run_project(*args: str) -> None:
    """Run ``python -m <module> ...`` in the project environment, streaming its output to the task log.

    The child stays in the task's process group, so when Airflow stops the task (timeout, mark failed)
    it signals the whole group and the stage goes with it; an exception inside this process (e.g. the
    execution timeout) stops the child explicitly.
    """
    import collections
    import logging
    import subprocess

    log = logging.getLogger("airflow.task")
    command = [PROJECT_PYTHON, "-m", *args]
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }
    shown = command if len(command) <= 12 else [*command[:10], f"... ({len(command) - 10} more)"]
    log.info("running in the project environment: %s", " ".join(shown))
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    process = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()[:LOG_LINE_CHARS]
            tail.append(line)
            log.info("%s", line)
        code = process.wait()
    except BaseException:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    if code != 0:
        detail = "\n".join(tail)
        raise RuntimeError(f"{' '.join(args[:2])} failed with exit code {code}; last output:\n{detail}")
