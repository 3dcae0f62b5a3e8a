"""Faults and concurrency: a training process killed mid-epoch, a full disk, a damaged model file, two
retrain starts at once, a dashboard restarted while a job runs. Nothing served is lost, and every
failure ends as a plain message on the Retrain page and in the CLI.

All of it runs on a private copy of the shipped registry (``CXR_MODELS_DIR``) and a private jobs folder
(``CXR_JOBS_DIR``), with real child processes and real (one-epoch, 20-image) training.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from gatekeeping import PASSWORD, admin_account, promote_for_setup
from streamlit.testing.v1 import AppTest
from test_app_retrain import button, unlock
from test_app_screen import open_page

from cxr_core import auth
from cxr_core.modelling.predictor import Predictor
from cxr_core.pipeline import jobs
from cxr_core.registry.store import Registry
from cxr_core.settings import load_params
from ui import retrain_view

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
APP = str(PROJECT_ROOT / "app.py")
SAMPLE = PROJECT_ROOT / "data" / "sample"
XRAY = SAMPLE / "Tuberculosis" / "tb0063.png"
JOB_TIMEOUT_S = 300

# Injected into child processes through PYTHONPATH: every numpy.save fails as on a full disk.
FULL_DISK = """
import errno, os
import numpy

def _no_space(file, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(file))

numpy.save = _no_space
"""


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A copy of the shipped registry and an empty jobs folder, both private to this test."""
    models = tmp_path / "models"
    shutil.copytree(PROJECT_ROOT / "models", models, ignore=shutil.ignore_patterns(".lock"))
    monkeypatch.setenv("CXR_MODELS_DIR", str(models))
    monkeypatch.setenv("CXR_JOBS_DIR", str(tmp_path / "jobs"))
    admin_account(monkeypatch, tmp_path)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    registry = Registry(models)
    yield registry
    auth.reset_throttle()
    for job in jobs.list_jobs():  # never leave a training process behind
        if job.get("state") in jobs.ACTIVE:
            jobs.cancel_job(job["id"])
            with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired, TypeError):
                psutil.Process(job["pid"]).wait(timeout=30)


def quick_params(epochs: int = 1) -> dict:
    params = load_params()
    params["train"].update(epochs=epochs, patience=epochs)
    params["evaluate"]["n_boot"] = 50
    return params


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the registry (except its lock and the audit trail, which records attempts) and its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in (".lock", "audit.jsonl")
    }


def wait_for(
    job_id: str, done=lambda s: s["state"] not in jobs.ACTIVE, timeout: float = JOB_TIMEOUT_S
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobs.job_status(job_id)
        if done(status) or status["state"] not in jobs.ACTIVE:
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {status['state']} after {timeout} s:\n{jobs.log_tail(job_id)}")


def scores_with_current(registry: Registry) -> str:
    """Score a real X-ray with whatever the registry serves now; returns the serving version."""
    model_dir, warning = registry.resolve_with_warning()
    predictor = Predictor(model_dir)
    [item] = predictor.screen([(XRAY.name, XRAY)])
    assert item.ok and 0.0 <= item.prediction.probability <= 1.0
    return predictor.version


def open_retrain() -> AppTest:
    return unlock(open_page("pages/retrain.py", 120), PASSWORD)


def run_cli(*args: str, extra_pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    path = [str(extra_pythonpath)] if extra_pythonpath else []
    return subprocess.run(
        [sys.executable, "-m", "cxr_core", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(PROJECT_ROOT)])},
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------------ SIGKILL mid-epoch


def test_sigkill_mid_epoch_keeps_the_current_model_serving_and_the_next_retrain_succeeds(env):
    registry = env
    current = registry.current_version()
    versions_before = {m["version"] for m in registry.versions()}
    before = snapshot(registry.root)

    job_id = jobs.start_job(SAMPLE, quick_params(epochs=200), models_root=registry.root, promote="gate")
    status = wait_for(job_id, done=lambda s: (s.get("last_epoch") or {}).get("epoch", 0) >= 1)
    assert status["state"] == "running" and status["stage"] == "train", jobs.log_tail(job_id)
    os.kill(status["pid"], signal.SIGKILL)  # in epoch 2 of 200: the epoch-1 report has just been written

    failed = wait_for(job_id, timeout=30)
    assert failed["state"] == "failed" and "ended unexpectedly" in failed["error"]
    assert snapshot(registry.root) == before, "the registry changed (pointer, a version, or a leftover)"
    assert not list(registry.root.glob(".tmp-*"))
    registry.verify(current)
    assert scores_with_current(registry) == current
    assert jobs.running_job() is None, "a dead job must not block the next one"

    again = jobs.start_job(SAMPLE, quick_params(epochs=1), models_root=registry.root, promote="never")
    done = wait_for(again)
    assert done["state"] == "succeeded", jobs.log_tail(again)
    new_version = done["result"]["version"]
    assert {m["version"] for m in registry.versions()} == versions_before | {new_version}
    registry.verify(new_version)
    assert registry.current_version() == current


# ------------------------------------------------------------------------------ a stage fails


@pytest.fixture
def full_disk(tmp_path) -> Path:
    folder = tmp_path / "inject"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(textwrap.dedent(FULL_DISK))
    return folder


def test_cli_pipeline_on_a_full_disk_prints_one_clear_line_and_loses_nothing(env, full_disk, tmp_path):
    registry = env
    before = snapshot(registry.root)
    work = tmp_path / "work"
    result = run_cli(
        "pipeline", "--data", str(SAMPLE), "--work", str(work), "--epochs", "1", extra_pythonpath=full_disk
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = error_lines(result.stderr)
    assert "No space left on device" in line and "free disk space" in line, line
    assert snapshot(registry.root) == before
    assert not [p for p in work.rglob("*") if "staging" in p.name], "a half-written stage folder was left"


def test_cli_pipeline_on_a_missing_or_unreadable_dataset_says_so(env, tmp_path):
    registry = env
    before = snapshot(registry.root)
    missing = run_cli("pipeline", "--data", str(tmp_path / "nowhere"), "--work", str(tmp_path / "w1"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert error_lines(missing.stderr) == [f"error: There is no dataset at {tmp_path / 'nowhere'}."]

    junk = tmp_path / "junk"
    for folder in ("Normal", "Tuberculosis"):
        (junk / folder).mkdir(parents=True)
        for i in range(3):
            (junk / folder / f"{i}.png").write_bytes(b"not an image at all\n" * i)
    unreadable = run_cli("pipeline", "--data", str(junk), "--work", str(tmp_path / "w2"))
    assert unreadable.returncode == 2 and "Traceback" not in unreadable.stderr, unreadable.stderr[-3000:]
    [line] = error_lines(unreadable.stderr)
    assert "none of the 6 files" in line and "could be read" in line, line
    assert snapshot(registry.root) == before


def test_retrain_page_shows_a_failed_stage_with_its_message(env, full_disk, tmp_path, monkeypatch):
    registry = env
    before = snapshot(registry.root)
    at = open_retrain()
    at.text_input(key="data_path").set_value(str(tmp_path / "nowhere"))
    button(at, "Start retraining").click()
    at.run()
    assert any("There is no dataset at" in e.value for e in at.error)
    assert jobs.list_jobs() == []

    # The job's child process inherits the environment, and with it the full-disk injection.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(full_disk), str(PROJECT_ROOT)]))
    at.text_input(key="data_path").set_value(str(SAMPLE))
    at.number_input(key="epochs").set_value(1)
    button(at, "Start retraining").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    job_id = at.session_state["started_job"]
    status = wait_for(job_id)
    assert status["state"] == "failed"
    assert status["error"].startswith("No space left on device: ") and "Traceback" not in status["error"]

    fresh = open_retrain()
    shown = [e.value for e in fresh.error if e.value.startswith("The job failed:")]
    assert shown == [f"The job failed: {status['error']}"]
    assert fresh.dataframe[0].value.iloc[0]["message"] == status["error"]
    assert snapshot(registry.root) == before
    assert not [p for p in (jobs.jobs_dir() / job_id).rglob("*") if "staging" in p.name]


# ------------------------------------------------------------------------------ a damaged model file


def damage(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        handle.write(b"\x00damaged\x00")


def test_a_damaged_current_model_is_refused_and_the_last_good_one_serves(env):
    registry = env
    good = registry.current_version()
    registry.register(registry.version_dir(good), version="v-newer")
    promote_for_setup(registry, "v-newer")
    damage(registry.version_dir("v-newer") / "model.keras")

    result = run_cli("predict", str(XRAY))
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "v-newer" in warnings[0] and "corrupt" in warnings[0]
    assert f"Using the previous version, {good}, instead" in warnings[0]
    assert f'"model_version": "{good}"' in result.stdout and '"ok": true' in result.stdout

    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert any("corrupt" in w.value and good in w.value for w in at.warning)
    at.file_uploader(key="uploads").set_value([(XRAY.name, XRAY.read_bytes(), "image/png")])
    at.run()
    assert not at.exception
    assert [m.label for m in at.metric].count("TB probability") == 1
    assert at.dataframe[0].value.iloc[0]["model_version"] == good

    for meta in registry.versions():  # no good version left: refuse, never guess
        if meta["version"] != "v-newer":
            damage(registry.version_dir(meta["version"]) / "model.keras")
    result = run_cli("predict", str(XRAY))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    assert "corrupt" in line and "No earlier model version passes its integrity check" in line
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    assert any(e.value.startswith("Screening is not available:") and "corrupt" in e.value for e in at.error)


# ------------------------------------------------------------------------------ two starts at once


START_IN_CHILD = """
import sys, time
from pathlib import Path
from cxr_core.pipeline import jobs
from cxr_core.settings import load_params

params = load_params()
params["train"].update(epochs=1, patience=1)
checked = jobs.running_job  # the same widened gap as the threads': all three are inside it together
jobs.running_job = lambda root=None: (checked(root), time.sleep(0.3))[0]
barrier = Path(sys.argv[1])
(barrier / f"ready-{sys.argv[4]}").touch()
while not (barrier / "go").exists():
    time.sleep(0.01)
try:
    print("started", jobs.start_job(sys.argv[2], params, models_root=sys.argv[3]))
except jobs.JobBusy:
    print("busy")
"""


def test_simultaneous_retrain_starts_run_exactly_one_job(env, monkeypatch, tmp_path):
    registry = env
    # Widen the gap between "is a job running?" and "start one", as a slow disk would: without the
    # lock every starter would pass the check before any of them had written its job folder.
    checked = jobs.running_job
    monkeypatch.setattr(jobs, "running_job", lambda root=None: (checked(root), time.sleep(0.3))[0])

    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        try:
            outcomes.append(jobs.start_job(SAMPLE, quick_params(), models_root=registry.root))
        except jobs.JobBusy:
            outcomes.append("busy")

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    started = [o for o in outcomes if o != "busy"]
    assert len(outcomes) == 4 and len(started) == 1, outcomes
    assert [j["id"] for j in jobs.list_jobs()] == started
    jobs.cancel_job(started[0])
    wait_for(started[0], timeout=60)

    # The same from separate processes (two dashboard workers, or the dashboard and a script).
    barrier = tmp_path / "barrier"  # released only once every child has started and imported everything
    barrier.mkdir()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", START_IN_CHILD, str(barrier), str(SAMPLE), str(registry.root), str(n)],
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    deadline = time.monotonic() + 120
    while len(list(barrier.glob("ready-*"))) < 3:
        assert time.monotonic() < deadline, "the children never all got ready"
        assert all(child.poll() is None for child in children), "a child ended before the start line"
        time.sleep(0.05)
    (barrier / "go").touch()
    said = [child.communicate(timeout=120)[0].strip() for child in children]
    started = [line.split()[1] for line in said if line.startswith("started")]
    assert len(started) == 1 and said.count("busy") == 2, said
    assert sorted(j["id"] for j in jobs.list_jobs() if j["state"] in jobs.ACTIVE) == started


# ------------------------------------------------------------------------------ dashboard restart


def test_a_restarted_dashboard_finds_the_running_job_once_and_then_sees_it_failed(env):
    at = open_retrain()
    at.number_input(key="epochs").set_value(200)
    button(at, "Start retraining").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    job_id = at.session_state["started_job"]
    pid = jobs.job_status(job_id)["pid"]

    # A new session (what a restarted dashboard or a second browser gets) reads the jobs folder afresh.
    fresh = open_retrain()
    history = fresh.dataframe[0].value
    assert list(history["job"]) == [job_id] and list(history["state"]) == ["running"]
    assert any(m.value == f"**Latest job** `{job_id}`" for m in fresh.markdown)
    progress = fresh.get("progress")[0].proto.text  # the job's one state label: what it is doing
    assert progress in retrain_view.STAGE_LABELS.values() or progress == "Starting", progress
    assert not any(b.label.startswith("Promote") for b in fresh.button)
    listed = subprocess.run(  # and so does another process
        [
            sys.executable,
            "-c",
            "from cxr_core.pipeline import jobs; print([j['state'] for j in jobs.list_jobs()])",
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.stdout.strip() == "['running']", listed.stderr[-2000:]

    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout=30)
    after = open_retrain()
    history = after.dataframe[0].value
    assert list(history["job"]) == [job_id] and list(history["state"]) == ["failed"]
    assert any("The job failed: the training process ended unexpectedly" in e.value for e in after.error)
    assert len([d for d in jobs.jobs_dir().iterdir() if d.is_dir()]) == 1
