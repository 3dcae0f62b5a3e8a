"""Load: 8 dashboard sessions at once, each screening 10 real X-rays, in one server process.

Streamlit runs every browser session's script in its own thread of one process, sharing the cached
model; here 8 ``AppTest`` sessions run in 8 threads the same way. Every one of the 80 images must get
its result (the same probability the model gives it alone), no session may error, and the process's
memory must stay bounded. The figures (peak RSS, growth, wall time) are printed as one JSON line and
written to ``test-artifacts/load.json``; nothing is asserted about time.
"""

import json
import os
import shutil
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import shared_records
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.util import patch_config_options

from cxr_core.modelling.predictor import Predictor
from cxr_core.registry.store import Registry
from ui import screening_view

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
APP = str(PROJECT_ROOT / "app.py")
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
SESSIONS = 8
PER_SESSION = 10
MAX_GROWTH_MB = 2048


@pytest.fixture
def shared_runtime(monkeypatch):
    """Let AppTest sessions run concurrently in one process, as a streamlit server's sessions do.

    ``AppTest.run`` installs a mock ``Runtime`` singleton for its run and sets it back to ``None`` when
    *its* run ends, so with two sessions in flight the first to finish pulls the runtime from under
    the other ("Runtime hasn't been created!"). This keeps the last installed mock visible to every
    session: a limit of the test harness, not of the dashboard (the real server has one runtime).
    """
    from streamlit.runtime.runtime import Runtime

    installed: list = []

    def instance(cls):
        if cls._instance is not None:
            installed[:] = [cls._instance]
        if not installed:
            raise RuntimeError("Runtime hasn't been created!")
        return installed[0]

    monkeypatch.setattr(Runtime, "instance", classmethod(instance))
    monkeypatch.setattr(
        Runtime, "exists", classmethod(lambda cls: cls._instance is not None or bool(installed))
    )
    # one override for all, undone once at the end; magic off as in .streamlit/config.toml, stated here
    # because each AppTest session has its own script cache, so all eight compile the pages at once
    with patch_config_options({"global.appTest": True, "runner.magicEnabled": False}):
        yield


@pytest.fixture
def models(tmp_path, monkeypatch) -> Path:
    copy = tmp_path / "models"
    shutil.copytree(PROJECT_ROOT / "models", copy, ignore=shutil.ignore_patterns(".lock"))
    monkeypatch.setenv("CXR_MODELS_DIR", str(copy))
    monkeypatch.setenv("CXR_JOBS_DIR", str(tmp_path / "jobs"))
    return copy


def session_files(shared_cxr) -> list[list[tuple[str, bytes]]]:
    """80 different real X-rays from all three sources, 10 per session."""
    rows = shared_records("tbx11k") + shared_records("openist") + shared_records("shenzhen")
    step = len(rows) // (SESSIONS * PER_SESSION)
    picked = rows[::step][: SESSIONS * PER_SESSION]
    files = [(row["path"].replace("/", "_"), (shared_cxr / row["path"]).read_bytes()) for row in picked]
    return [files[i * PER_SESSION : (i + 1) * PER_SESSION] for i in range(SESSIONS)]


class PeakRss(threading.Thread):
    """Samples this process's resident memory every 50 ms until stopped."""

    def __init__(self):
        super().__init__(daemon=True)
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)


def test_eight_concurrent_sessions_each_screening_ten_real_xrays(models, shared_runtime, shared_cxr):
    batches = session_files(shared_cxr)
    assert len({name for batch in batches for name, _ in batch}) == SESSIONS * PER_SESSION
    alone = Predictor(Registry(models).resolve())  # what each image scores when screened by itself
    expected = {
        item.name: item.prediction.probability for batch in batches for item in alone.screen(batch) if item.ok
    }
    assert len(expected) == SESSIONS * PER_SESSION
    del alone

    rss_before = psutil.Process().memory_info().rss
    monitor = PeakRss()
    monitor.start()
    barrier = threading.Barrier(SESSIONS)
    outcomes: dict[int, dict] = {}

    def session(index: int) -> None:
        at = None
        try:
            at = AppTest.from_file(APP, default_timeout=300)
            at.run()
            barrier.wait(timeout=120)  # every session uploads at the same moment
            at.file_uploader(key="uploads").set_value(
                [(name, data, "image/png") for name, data in batches[index]]
            )
            at.run()
            table = at.dataframe[0].value if len(at.dataframe) else None
            outcomes[index] = {
                "exceptions": [e.value for e in at.exception],
                "errors": [e.value for e in at.error if "could not be screened" in e.value],
                "metrics": [m.label for m in at.metric].count("TB probability"),
                "rows": [] if table is None else table.to_dict("records"),
            }
        except Exception as error:  # reported below with the session number, with what the page showed
            shown = [] if at is None else [e.value for e in at.exception] + [e.value for e in at.error]
            outcomes[index] = {"crash": repr(error), "page_showed": shown}

    started = time.perf_counter()
    threads = [threading.Thread(target=session, args=(i,), name=f"session-{i}") for i in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=540)
    wall = time.perf_counter() - started
    monitor.stopped.set()
    monitor.join()

    figures = {
        "sessions": SESSIONS,
        "images_per_session": PER_SESSION,
        "wall_seconds": round(wall, 1),
        "images_per_second": round(SESSIONS * PER_SESSION / wall, 1),
        "rss_before_mb": round(rss_before / 2**20),
        "rss_peak_mb": round(monitor.peak / 2**20),
        "rss_growth_mb": round((monitor.peak - rss_before) / 2**20),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(figures))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "load.json").write_text(json.dumps(figures, indent=2) + "\n")

    assert sorted(outcomes) == list(range(SESSIONS)), "a session never finished"
    for index, outcome in sorted(outcomes.items()):
        assert "crash" not in outcome, (index, outcome)
        assert outcome["exceptions"] == [] and outcome["errors"] == [], (index, outcome)
        assert outcome["metrics"] == 1, (index, outcome["metrics"])  # the worklist's first film is open
        rows = outcome["rows"]  # the worklist, in order of risk; identity off: films named by upload position
        names = [name for name, _ in batches[index]]
        pseudonyms = {screening_view.pseudonym(position): name for position, name in enumerate(names, start=1)}
        assert sorted(row["file"] for row in rows) == sorted(pseudonyms), index
        for row in rows:
            assert row["result"] in screening_view.RESULTS and row["result"] != "Unreadable", (index, row)
            assert not row["problem"], (index, row)
            original = pseudonyms[row["file"]]
            shown = str(row["tb_probability"])  # printed with as many digits as the threshold needs
            digits = len(shown.split(".")[1]) if "." in shown else 0
            assert abs(float(shown) - expected[original]) <= 0.5 * 10**-digits + 1e-4, (index, row)
    assert figures["rss_growth_mb"] < MAX_GROWTH_MB, figures
