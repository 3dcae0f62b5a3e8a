"""Background retrain jobs: a real child process, live status, one at a time, death detected."""

import os
import signal
import time

import pytest

from cxr_core.pipeline import jobs
from cxr_core.registry.store import Registry
from cxr_core.settings import load_params


@pytest.fixture()
def job_env(tmp_path):
    params = load_params()
    params["train"].update(epochs=2, patience=2)
    params["evaluate"]["n_boot"] = 50
    return tmp_path / "jobs", tmp_path / "models", params


def wait_for(job_id, root, states=("succeeded", "failed", "cancelled"), timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobs.job_status(job_id, root)
        if status["state"] in states:
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {status['state']} after {timeout}s")


def test_job_runs_pipeline_in_a_separate_process_and_registers_a_candidate(job_env, kaggle_tree):
    root, models, params = job_env
    job_id = jobs.start_job(kaggle_tree, params, root=root, models_root=models)
    started = jobs.job_status(job_id, root)
    assert started["pid"] != os.getpid()
    with pytest.raises(jobs.JobBusy):
        jobs.start_job(kaggle_tree, params, root=root, models_root=models)
    status = wait_for(job_id, root)
    assert status["state"] == "succeeded", jobs.log_tail(job_id, root)
    result = status["result"]
    assert result["version"] in [v["version"] for v in Registry(models).versions()]
    assert result["promoted"] is False and Registry(models).current_version() is None
    assert "passed" in result["gate"]
    assert "epoch 2/2" in jobs.log_tail(job_id, root)
    assert [j["id"] for j in jobs.list_jobs(root)] == [job_id]


def test_killed_job_is_reported_failed_and_registers_nothing(job_env, kaggle_tree):
    root, models, params = job_env
    params["train"].update(epochs=50, patience=50)
    job_id = jobs.start_job(kaggle_tree, params, root=root, models_root=models)
    deadline = time.monotonic() + 300
    while jobs.job_status(job_id, root).get("stage") != "train":
        assert time.monotonic() < deadline, f"the job never reached training: {jobs.job_status(job_id, root)}"
        assert jobs.job_status(job_id, root)["state"] in jobs.ACTIVE, jobs.log_tail(job_id, root)
        time.sleep(0.3)
    killed_at = jobs.job_status(job_id, root)
    assert killed_at["stage"] == "train" and killed_at["state"] in jobs.ACTIVE  # killed mid-training, as named
    os.kill(killed_at["pid"], signal.SIGKILL)
    status = wait_for(job_id, root, states=("failed",), timeout=30)
    assert "ended unexpectedly" in status["error"]
    assert not models.exists() or Registry(models).versions() == []
    assert jobs.running_job(root) is None, "a dead job must not block the next one"


def test_cancel_stops_the_process_group(job_env, kaggle_tree):
    root, models, params = job_env
    params["train"].update(epochs=50, patience=50)
    job_id = jobs.start_job(kaggle_tree, params, root=root, models_root=models)
    pid = jobs.job_status(job_id, root)["pid"]
    jobs.cancel_job(job_id, root)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        jobs.job_status(job_id, root)  # reaps the zombie child
        time.sleep(0.2)
    else:
        raise AssertionError("cancelled job's process is still alive")
    assert jobs.job_status(job_id, root)["state"] == "cancelled"
    from cxr_core.registry import audit

    trail = [(e["action"], e.get("job"), e["outcome"]) for e in audit.read(models)]
    assert trail[:2] == [("retrain_cancel", job_id, "ok"), ("retrain_start", job_id, "ok")]
