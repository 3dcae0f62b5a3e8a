"""Background retrain jobs: a separate process per run, a status file it keeps current, one job at a time.

Training inside the web server would freeze every clinician's session and die with it; so the Retrain
page starts ``python -m cxr_core.pipeline.jobs <dir>`` in its own session (process group) and only reads the
small JSON status the child rewrites atomically. Everything a job has is in ``jobs/<id>/`` (status,
params, log, work files), so history survives a dashboard restart. A job whose process is gone while
its status still says running (SIGKILL, out of memory, machine reboot) is marked failed on the next
look, never left "running" forever. A file lock makes "is a job running? if not, start one" atomic
across sessions and processes.
"""

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psutil
import yaml

from cxr_core.errors import CxrError, os_error_message
from cxr_core.fsutil import write_json_atomic
from cxr_core.registry import audit
from cxr_core.settings import PROJECT_ROOT, Layout, jobs_dir

ACTIVE = ("starting", "running")
STATUS, LOG, PARAMS = Layout.JOB_STATUS, Layout.JOB_LOG, Layout.JOB_PARAMS


class JobBusy(CxrError):
    """Another retrain job is already running."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _root(root: str | Path | None) -> Path:
    path = Path(root) if root else jobs_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _exclusive(root: Path):
    with open(root / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_status(job_dir: Path) -> dict:
    try:
        return json.loads((job_dir / STATUS).read_text())
    except (OSError, ValueError):
        return {"id": job_dir.name, "state": "failed", "error": "job status file is missing or unreadable"}


def _process_alive(status: dict) -> bool:
    """True while the job's own process runs (a recycled pid with another start time does not count)."""
    pid = status.get("pid")
    if not pid:
        return status.get("state") == "starting" and time.time() - status.get("created_ts", 0) < 30
    _reap(pid)
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        started = status.get("process_started")
        return started is None or abs(process.create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False


def _reap(pid: int) -> None:
    """Collect the exit of a job this process started, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def job_status(job_id: str, root: str | Path | None = None) -> dict:
    """The job's status, with a dead-but-"running" job reconciled to failed (and saved so)."""
    job_dir = _root(root) / job_id
    status = _read_status(job_dir)
    if status.get("pid"):
        _reap(status["pid"])
    if status.get("state") in ACTIVE and not _process_alive(status):
        status.update(
            state="failed", finished=_now(), error="the training process ended unexpectedly (killed?)"
        )
        write_json_atomic(job_dir / STATUS, status)
    return status


def list_jobs(root: str | Path | None = None) -> list[dict]:
    """Every job, newest first."""
    base = _root(root)
    jobs = [job_status(d.name, base) for d in base.iterdir() if d.is_dir() and (d / STATUS).exists()]
    return sorted(jobs, key=lambda s: s.get("created", ""), reverse=True)


def running_job(root: str | Path | None = None) -> dict | None:
    return next((job for job in list_jobs(root) if job.get("state") in ACTIVE), None)


def start_job(
    data_path: str | Path,
    params: dict,
    root: str | Path | None = None,
    models_root: str | Path | None = None,
    promote: str = "never",
    actor: str | None = None,
) -> str:
    """Launch the pipeline in a new process; raises :class:`JobBusy` if one is already running."""
    base = _root(root)
    with _exclusive(base):
        busy = running_job(base)
        if busy:
            raise JobBusy(f"a retrain job ({busy['id']}) is already running; wait for it or cancel it")
        job_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        job_dir = base / job_id
        job_dir.mkdir()
        (job_dir / PARAMS).write_text(yaml.safe_dump(params, sort_keys=False))
        status = {
            "id": job_id,
            "state": "starting",
            "created": _now(),
            "created_ts": time.time(),
            "data_path": str(data_path),
            "models_root": str(models_root) if models_root else None,
            "promote": promote,
            "actor": actor,
            "stage": None,
            "progress": {},
        }
        write_json_atomic(job_dir / STATUS, status)
        with open(job_dir / LOG, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "cxr_core.pipeline.jobs", str(job_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=PROJECT_ROOT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        status.update(
            state="running", pid=process.pid, process_started=psutil.Process(process.pid).create_time()
        )
        write_json_atomic(job_dir / STATUS, status)
    audit.record("retrain_start", root=models_root, actor=actor, job=job_id, data=str(data_path))
    return job_id


def cancel_job(job_id: str, root: str | Path | None = None, actor: str | None = None) -> dict:
    """Stop the whole process group of a running job and mark it cancelled."""
    base = _root(root)
    with _exclusive(base):
        status = job_status(job_id, base)
        if status.get("state") in ACTIVE and status.get("pid"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(status["pid"], signal.SIGTERM)
            latest = _read_status(base / job_id)  # the job may have finished while we looked
            if latest.get("state") in ACTIVE:
                latest.update(state="cancelled", finished=_now())
                write_json_atomic(base / job_id / STATUS, latest)
            status = latest
    audit.record("retrain_cancel", root=status.get("models_root"), actor=actor, job=job_id,
                 outcome="ok" if status.get("state") == "cancelled" else f"job already {status.get('state')}")  # fmt: skip
    return status


def log_tail(job_id: str, root: str | Path | None = None, lines: int = 40) -> str:
    path = _root(root) / job_id / LOG
    if not path.exists():
        return ""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 64_000))
        return "\n".join(handle.read().decode("utf-8", "replace").splitlines()[-lines:])


def _interrupt(signum, frame):
    """SIGTERM (Cancel) unwinds the pipeline like Ctrl-C, so staging folders are cleaned up."""
    raise KeyboardInterrupt


def run_job(job_dir: str | Path) -> int:
    """Child-process side: run the pipeline, keeping ``status.json`` current; never raises."""
    from cxr_core.pipeline.run import run_pipeline

    job_dir = Path(job_dir)
    status = _read_status(job_dir)
    status.update(state="running", pid=os.getpid(), started=_now())
    write_json_atomic(job_dir / STATUS, status)
    started = time.perf_counter()

    def progress(event: dict) -> None:
        if current_state() == "cancelled":
            raise KeyboardInterrupt
        status["stage"] = event.get("stage", status.get("stage"))
        status["progress"] = {**event, "elapsed_seconds": round(time.perf_counter() - started, 1)}
        if "epoch" in event:  # kept after training ends, so the page can still show the last epoch
            status["last_epoch"] = event
        write_json_atomic(job_dir / STATUS, status)

    def current_state() -> str | None:
        return _read_status(job_dir).get("state")

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        params = yaml.safe_load((job_dir / PARAMS).read_text())
        result = run_pipeline(
            status["data_path"],
            job_dir / "work",
            params,
            progress=progress,
            models_root=status.get("models_root"),
            promote=status.get("promote", "never"),
            actor=status.get("actor"),
        )
        status.update(state="succeeded", result=result)
        code = 0
    except KeyboardInterrupt:
        status.update(state="cancelled")
        code = 1
    except CxrError as error:
        status.update(state="failed", error=str(error))
        code = 1
    except OSError as error:  # a full disk, a read-only folder: say so plainly on the Retrain page
        message = os_error_message(error)
        print(f"error: {message}", flush=True)
        status.update(state="failed", error=message)
        code = 1
    except Exception as error:  # any crash must end as a visible failure, not a silent "running"
        traceback.print_exc()
        status.update(state="failed", error=f"{type(error).__name__}: {error}")
        code = 1
    status.update(finished=_now(), elapsed_seconds=round(time.perf_counter() - started, 1))
    write_json_atomic(job_dir / STATUS, status)
    return code


if __name__ == "__main__":  # the Retrain page starts jobs as `python -m cxr_core.pipeline.jobs <dir>`
    sys.exit(run_job(sys.argv[1]))
