"""The Retrain page through AppTest: admin gate, a real background retrain, quality gate, promote, rollback."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import test_app_screen as shared
import yaml
from gatekeeping import ADMIN, PASSWORD, admin_account
from streamlit.testing.v1 import AppTest
from test_app_screen import APP, NORMAL_XRAY, open_page

from cxr_core import auth
from cxr_core.fsutil import write_json_atomic
from cxr_core.pipeline import jobs
from cxr_core.registry import audit
from cxr_core.settings import load_params

pytestmark = pytest.mark.slow
seed, dashboard = shared.seed, shared.dashboard  # fixtures: a private copy of a really trained registry

JOB_TIMEOUT_S = 300


@pytest.fixture
def lenient_policy(tmp_path, monkeypatch):
    """The server's configuration for this test: floors low enough for a 1-epoch model on 20 films.

    Only the server's params file can lower the floors; the Retrain form cannot.
    """
    params = load_params()
    params["gate"].update(min_sensitivity=0.0, min_specificity=0.0, max_auc_drop=1.0,
                          min_test_films=0, min_test_per_class=0)  # fmt: skip
    path = tmp_path / "server-params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("CXR_PARAMS_FILE", str(path))
    return params["gate"]


@pytest.fixture
def admin(dashboard, monkeypatch, tmp_path):
    admin_account(monkeypatch, tmp_path)  # user "admin", a users file of this test's own
    yield dashboard
    auth.reset_throttle()
    running = jobs.running_job()
    if running:  # never leave a training process behind
        jobs.cancel_job(running["id"])


def open_retrain() -> AppTest:
    return open_page("pages/retrain.py", 120)


def unlock(at: AppTest, password: str, user: str = ADMIN) -> AppTest:
    at.text_input(key="admin_user").set_value(user)
    at.text_input(key="admin_password").set_value(password)
    button(at, "Unlock").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def button(at: AppTest, prefix: str):
    found = [b for b in at.button if b.label.startswith(prefix)]
    assert found, f"no button starting {prefix!r}; have {[b.label for b in at.button]}"
    return found[0]


def has_button(at: AppTest, prefix: str) -> bool:
    return any(b.label.startswith(prefix) for b in at.button)


def screen_model_version(version_expected: str) -> None:
    """A separate browser session on the Screen page scores an X-ray with the expected model."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.file_uploader(key="uploads").set_value([(NORMAL_XRAY.name, NORMAL_XRAY.read_bytes(), "image/png")])
    at.run()
    assert not at.exception
    assert [m.label for m in at.metric].count("TB probability") == 1
    assert at.dataframe[0].value.iloc[0]["model_version"] == version_expected


def wait_for(job_id: str) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        status = jobs.job_status(job_id)
        if status["state"] not in jobs.ACTIVE:
            return status
        time.sleep(1)
    raise AssertionError(f"job {job_id} still running after {JOB_TIMEOUT_S} s: {status}")


def test_admin_gate_refuses_a_wrong_password(admin, monkeypatch):
    # A stopped clock: the growing delay must still be running when the right password follows, however
    # slowly a loaded machine runs the page (the delay's length is tested in tests/test_auth.py).
    monkeypatch.setattr(auth, "_BOOK", auth.ThrottleBook(clock=lambda: 1000.0))
    at = open_retrain()
    assert not has_button(at, "Start retraining")
    unlock(at, "letmein")
    assert any("Wrong user name or password" in e.value for e in at.error)
    assert not has_button(at, "Start retraining")
    unlock(at, PASSWORD)  # straight away: the growing delay refuses even the right one
    assert any("Too many wrong passwords" in e.value for e in at.error)
    assert not has_button(at, "Start retraining")
    auth.reset_throttle()
    unlock(at, PASSWORD)
    assert has_button(at, "Start retraining")
    button(at, "Lock").click()
    at.run()
    assert not has_button(at, "Start retraining")


def test_without_a_configured_account_admin_actions_stay_locked(dashboard):
    at = open_retrain()
    assert any("users add" in i.value for i in at.info)
    assert not has_button(at, "Start retraining") and not has_button(at, "Unlock")


def test_the_form_refuses_a_gate_floor_below_the_servers_policy_with_a_message(admin):
    at = unlock(open_retrain(), PASSWORD)
    policy = load_params()["gate"]
    assert at.number_input(key="gate_min_sens").value == policy["min_sensitivity"] == 0.9
    at.number_input(key="gate_min_sens").set_value(0.5)
    button(at, "Start retraining").click()
    at.run()
    refused = next(e.value for e in at.error if e.value.startswith("Not started"))
    assert "Gate: minimum sensitivity: 0.5 is outside 0.9–1" in refused
    assert jobs.list_jobs() == []


def test_an_out_of_range_value_is_refused_never_clamped(admin):
    """A patience of 300 (max 100) used to turn the field red and run with 8."""
    at = unlock(open_retrain(), PASSWORD)
    at.number_input(key="patience").set_value(300)
    button(at, "Start retraining").click()
    at.run()
    refused = next(e.value for e in at.error if e.value.startswith("Not started"))
    assert "Early-stopping patience: 300 is outside 1–100" in refused
    assert jobs.list_jobs() == []  # nothing started with another value
    assert at.number_input(key="patience").value == 300  # what the user typed stays, to be corrected


def test_failed_gate_candidates_are_listed_apart_pruned_and_never_usable(admin):
    from cxr_core.registry import audit
    from ui import retrain_view, versions_view

    registry = admin.registry
    candidate = registry.version_dir("v-copy")
    for n in range(1, 6):  # five small runs that failed the gate, registered one after another
        version = f"v2000010{n}-000000"
        shutil.copytree(candidate, registry.root / version)
        meta = json.loads((registry.root / version / "metadata.json").read_text())
        (registry.root / version / "metadata.json").write_text(json.dumps({**meta, "version": version}))
        audit.record("gate_verdict", root=registry.root, version=version, outcome="failed",
                     reasons=["ROC AUC 0.333 on 4 films"])  # fmt: skip
    at = unlock(open_retrain(), PASSWORD)
    assert not at.exception, [e.value for e in at.exception]
    listed = next(d.value for d in at.dataframe if "why the gate refused it" in d.value.columns)
    kept = sorted(f"v2000010{n}-000000" for n in range(3, 6))
    assert sorted(listed["version"]) == kept  # the newest KEEP_REFUSED are kept ...
    assert retrain_view.KEEP_REFUSED == 3
    assert not (registry.root / "v20000101-000000").exists()  # ... older ones are deleted
    assert any("Deleted now: v20000101-000000, v20000102-000000" in c.value for c in at.caption)
    deletions = [e for e in audit.read(registry.root) if e.get("action") == "refused_deleted"]
    assert sorted(e["version"] for e in deletions) == ["v20000101-000000", "v20000102-000000"]
    assert all(e["reasons"] == ["ROC AUC 0.333 on 4 films"] and e["actor"] for e in deletions)
    usable = [row["version"] for row in versions_view.version_rows(registry)]
    assert not set(kept) & set(usable) and "v-copy" in usable
    assert not [b for b in at.button if any(v in b.label for v in kept)]  # never offered for promotion


def test_retrain_in_background_is_judged_under_the_who_floors(admin, lenient_policy):
    """A real background retrain; its 1-epoch model on 20 films is judged under the WHO floors (the
    server's params file asks for 0.0, the code keeps 0.90 / 0.70), filed with its weights, promoted only
    if that verdict passed."""
    registry = admin.registry
    before = registry.current_version()
    at = unlock(open_retrain(), PASSWORD)
    assert at.text_input(key="data_path").value == "data/sample"
    at.number_input(key="epochs").set_value(1)
    button(at, "Start retraining").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]

    job_id = at.session_state["started_job"]
    status = jobs.job_status(job_id)
    assert status["state"] in jobs.ACTIVE
    process = psutil.Process(status["pid"])
    assert status["pid"] != os.getpid() and "cxr_core.pipeline.jobs" in " ".join(process.cmdline())
    assert any(m.value.startswith("**Latest job**") and job_id in m.value for m in at.markdown)
    assert len(at.get("progress")) == 1

    button(at, "Start retraining").click()  # a second start while the first runs
    at.run()
    assert any("already running" in w.value for w in at.warning)
    assert len(jobs.list_jobs()) == 1

    screen_model_version(before)  # screening keeps working while the model trains

    final = wait_for(job_id)
    assert final["state"] == "succeeded", jobs.log_tail(job_id)
    candidate, gate = final["result"]["version"], final["result"]["gate"]
    assert (gate["floors"]["min_sensitivity"], gate["floors"]["min_specificity"]) == (0.90, 0.70)
    assert not final["result"]["promoted"] and registry.current_version() == before  # registered only
    verdict = registry.verdict(candidate)
    assert verdict["passed"] == gate["passed"]
    assert verdict["model_sha256"] == registry.metadata(candidate)["model_sha256"]

    at.run()
    assert not at.exception
    assert any(candidate in h.value for h in at.subheader)
    # the job history (a refused candidate's own table may come first on the page)
    (history,) = [frame.value for frame in at.dataframe if "job" in frame.value.columns]
    assert history.iloc[0]["job"] == job_id
    assert history.iloc[0]["quality gate"] == ("passed" if gate["passed"] else "failed")
    assert has_button(at, f"Promote {candidate}") == gate["passed"]  # offered exactly when it passed
    trail = audit.read(registry.root)
    assert [e["action"] for e in trail][:3] == ["gate_verdict", "register", "retrain_start"]
    assert trail[2]["actor"].startswith(f"dashboard:{ADMIN}")  # the person who started it, by name

    fresh = unlock(open_retrain(), PASSWORD)  # a new session (a restarted dashboard) still has the history
    assert [f.value for f in fresh.dataframe if "job" in f.value.columns][0].iloc[0]["job"] == job_id


SHIPPED = Path(__file__).resolve().parent.parent / "models" / "v20261204-210202"


def test_a_candidate_that_passed_is_promoted_then_rolled_back_from_the_page(admin, monkeypatch, tmp_path):
    """A formerly shipped model (`v20261204-210202`, measured on 574 held-out films: sensitivity 0.941,
    specificity 0.829; 1.4 % of decisions changed by a strip and a marker) as the candidate of a finished job, judged by the real gate
    on its evaluation's report against the model in use: the page promotes it, the Screen page serves it,
    a rollback undoes it and the verdict no longer applies. The verdict is the one its job recorded (it
    passed the gate of its day); the page acts on that record."""
    from cxr_core.pipeline.run import summarise
    from cxr_core.registry.gate import policy_stamp, quality_gate, server_policy

    params = load_params()
    params["gate"].update(max_auc_drop=1.0)  # the seed model's AUC on 4 films says nothing; WHO floors stay
    server = tmp_path / "server-params.yaml"
    server.write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("CXR_PARAMS_FILE", str(server))
    registry = admin.registry
    before = registry.current_version()
    candidate = registry.register(SHIPPED, version="v-shipped")
    policy = server_policy()
    report = summarise(json.loads((SHIPPED / "metrics.json").read_text()))  # as register_candidate reads it
    result = quality_gate(report, registry.metadata(before)["metrics"], policy)
    # Its real figures meet every floor the gate held when it was evaluated; the markers in words and fonts
    # training never drew were measured from 2026-12-05 on, so today's gate calls that one unmeasured.
    assert result.reasons == ["how often decisions change with a strip and a marker in a word and font training "
                              "never drew was not measured"]  # fmt: skip
    assert any("of 574 decisions change with a strip" in check for check in result.checks)
    verdict = {"passed": True, "reasons": [], "floors": policy, "policy": policy_stamp(policy),
               "compared_with": before, "registry_stamp": registry.pointer_stamp()}  # fmt: skip
    registry.record_verdict(candidate, verdict)
    write_json_atomic(
        jobs.jobs_dir() / "20260101-000000-beefed" / "status.json",
        {"id": "20260101-000000-beefed", "state": "succeeded", "created": "2026-01-01T00:00:00+00:00",
         "data_path": "data/sample",
         "result": {"version": candidate, "compared_with": before, "promoted": False, "gate": verdict}},
    )  # fmt: skip

    at = unlock(open_retrain(), PASSWORD)
    assert any("Quality gate passed" in s.value for s in at.success)
    captions = " ".join(c.value for c in at.caption)  # the limits it was held to
    assert "by a strip and a marker ≤ 2%" in captions and "fonts training never drew ≤ 2%" in captions
    button(at, f"Promote {candidate}").click()
    at.run()
    assert registry.current_version() == candidate
    assert any(f"{candidate} is now the model in use" in s.value for s in at.success)
    screen_model_version(candidate)

    button(at, "Roll back").click()
    at.run()
    assert registry.current_version() == before
    screen_model_version(before)
    at.run()
    assert not has_button(at, f"Promote {candidate}"), "a verdict taken before the rollback no longer applies"
    assert any("changed since" in w.value for w in at.warning)
    trail = audit.read(registry.root)
    assert [e["action"] for e in trail][:2] == ["rollback", "promote"]
    assert trail[1]["model_sha256"] == registry.metadata(candidate)["model_sha256"]
    assert all(e["actor"].startswith(f"dashboard:{ADMIN}") for e in trail[:2])  # a person, by name


def test_failed_gate_offers_no_promotion(admin):
    job_dir = jobs.jobs_dir() / "20260101-000000-abcdef"
    write_json_atomic(
        job_dir / "status.json",
        {
            "id": job_dir.name,
            "state": "succeeded",
            "created": "2026-01-01T00:00:00+00:00",
            "finished": "2026-01-01T00:05:00+00:00",
            "data_path": "data/sample",
            "result": {
                "version": "v-copy",
                "compared_with": admin.registry.current_version(),
                "promoted": False,
                "gate": {"passed": False, "reasons": ["sensitivity 0.50 is below the floor 0.90"]},
            },
        },
    )
    at = unlock(open_retrain(), PASSWORD)
    assert any("Quality gate failed" in e.value and "below the floor" in e.value for e in at.error)
    assert not has_button(at, "Promote")


def test_dead_job_is_shown_as_failed_and_cancel_stops_a_running_one(admin):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    job_dir = jobs.jobs_dir() / "20260101-000000-deadbe"
    write_json_atomic(
        job_dir / "status.json",
        {
            "id": job_dir.name,
            "state": "running",
            "created": "2026-01-01T00:00:00+00:00",
            "pid": gone.pid,
            "process_started": 0.0,
            "data_path": "data/sample",
            "stage": "train",
            "progress": {},
        },
    )
    at = unlock(open_retrain(), PASSWORD)
    assert any("ended unexpectedly" in e.value for e in at.error)
    assert jobs.job_status(job_dir.name)["state"] == "failed"

    at.number_input(key="epochs").set_value(1)
    button(at, "Start retraining").click()
    at.run()
    job_id = at.session_state["started_job"]
    pid = jobs.job_status(job_id)["pid"]
    button(at, "Cancel this job").click()
    at.run()
    assert jobs.job_status(job_id)["state"] == "cancelled"
    with contextlib.suppress(psutil.NoSuchProcess):  # the whole process group was sent SIGTERM
        psutil.Process(pid).wait(timeout=30)
    assert not psutil.pid_exists(pid)
    assert any("cancelled" in w.value for w in at.warning)


# ------------------------------------------------------------------------------ issue 12: consistent states


def fake_job(job_id: str, **status) -> None:
    write_json_atomic(
        jobs.jobs_dir() / job_id / "status.json",
        {"id": job_id, "created": "2026-01-01T00:00:00+00:00", "data_path": "data/sample", **status},
    )


def finished_candidate(admin) -> None:
    fake_job(
        "20260101-000000-000001",
        state="succeeded",
        finished="2026-01-01T00:05:00+00:00",
        result={
            "version": "v-copy",
            "compared_with": admin.registry.current_version(),
            "promoted": False,
            "gate": {"passed": True, "reasons": []},
        },
    )


def test_a_new_job_has_one_state_label_and_hides_the_previous_verdict(admin):
    finished_candidate(admin)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fake_job(
            "20260101-000100-000002",
            state="running",
            pid=sleeper.pid,
            process_started=psutil.Process(sleeper.pid).create_time(),
            created_ts=time.time(),
        )
        (jobs.jobs_dir() / "20260101-000100-000002" / "log.txt").write_text(
            "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            "I0000 00:00:1796012721.921887   32663 port.cc:153] oneDNN custom operations are on.\n"
            "ingest: 12 of 20 images read\n"
        )
        at = unlock(open_retrain(), PASSWORD)
        bar = at.get("progress")[0]
        assert bar.proto.text == "Starting"  # not "running" beside "waiting to start"
        latest = next(m.value for m in at.markdown if m.value.startswith("**Latest job**"))
        assert "running" not in latest and "waiting" not in " ".join(m.value for m in at.markdown)
        assert not any("Quality gate passed" in s.value for s in at.success)
        assert any("hidden while a new job runs" in c.value for c in at.caption)
        log = at.code[0].value
        assert log == "ingest: 12 of 20 images read"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_cancelled_job_shows_no_time_left(admin):
    fake_job(
        "20260101-000200-000003",
        state="cancelled",
        finished="2026-01-01T00:03:00+00:00",
        elapsed_seconds=180,
        stage="train",
        progress={
            "stage": "train",
            "epoch": 2,
            "epochs": 10,
            "loss": 0.5,
            "val_auc": 0.7,
            "eta_seconds": 400,
        },
    )
    at = unlock(open_retrain(), PASSWORD)
    labels = [m.label for m in at.metric]
    assert "Epoch" in labels and "Time left (training)" not in labels
    assert at.get("progress")[0].proto.text == "Cancelled"
    assert any("cancelled" in w.value for w in at.warning)
