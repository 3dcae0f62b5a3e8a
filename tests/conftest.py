"""Fixtures shared by the test suite: where the real X-rays are, and small real datasets built from them."""

import csv
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from tools import under_ci

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_CXR = Path(os.environ.get("CXR_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data" / "cxr"))
SAMPLE_DIR = PROJECT_ROOT / "data" / "sample"

# The test server's configuration: datasets may come from the project's data/, the shared real X-rays
# and the temporary folders the tests build datasets in. Tests of the roots themselves narrow this.
os.environ.setdefault("CXR_UPLOADS_DIR", tempfile.mkdtemp(prefix="cxr-uploads-"))  # never the project's
os.environ.setdefault("CXR_LUNG_CACHE_DIR", tempfile.mkdtemp(prefix="cxr-lung-cache-"))  # never the project's work/
os.environ["CXR_DATASET_ROOTS"] = os.pathsep.join(
    [str(PROJECT_ROOT / "data"), str(SHARED_CXR.parent), tempfile.gettempdir()]
)


def shared_records(source=None, label=None):
    """Rows of the shared manifest (real, labelled X-rays), optionally filtered."""
    with open(SHARED_CXR / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        r
        for r in rows
        if (source is None or r["source"] == source) and (label is None or r["label"] == label)
    ]


@pytest.fixture(scope="session")
def shared_cxr() -> Path:
    if not (SHARED_CXR / "manifest.csv").exists():
        message = f"shared X-ray data not found at {SHARED_CXR} (set CXR_SHARED_DATA)"
        if under_ci():
            pytest.fail(message)  # in CI the data is always there: never let its absence pass as green
        pytest.skip(message)
    return SHARED_CXR


@pytest.fixture(scope="session")
def real_xray_path(shared_cxr) -> Path:
    """One real TB chest X-ray (TBX11K, 512x512 8-bit PNG)."""
    return shared_cxr / shared_records("tbx11k", "Tuberculosis")[0]["path"]


@pytest.fixture(scope="session")
def kaggle_tree(tmp_path_factory, shared_cxr) -> Path:
    """A tiny dataset in the Kaggle "TB Chest X-ray Database" layout, made of real shared images."""
    root = tmp_path_factory.mktemp("kaggle") / "TB_Chest_Radiography_Database"
    normals = shared_records("openist", "Normal")[:24] + shared_records("shenzhen", "Normal")
    tbs = shared_records("tbx11k", "Tuberculosis")[:28]
    for folder, rows in (("Normal", normals), ("Tuberculosis", tbs)):
        (root / folder).mkdir(parents=True)
        for i, row in enumerate(rows, 1):
            shutil.copy(shared_cxr / row["path"], root / folder / f"{folder}-{i}.png")
    return root


# Files that each take a minute or more (Airflow task processes, benchmarks, browsers, trainings in
# subprocesses), longest first. With ``-n 2 --dist loadfile`` (scripts/test.sh) a worker takes files in
# collection order, so these go first: started last, one of them would leave the other core idle for
# minutes at the end of the run (measured: the last 8 % of the suite took 7 of its 17 minutes).
LONG_FILES_FIRST = (
    "tests/test_airflow_dag.py",
    "tests/test_bench_smoke.py",
    "tests/test_airflow_celery.py",
    "tests/test_bench_archive_celery.py",
    "tests/test_browser_workflow.py",
    "tests/pipeline/test_run.py",
    "tests/test_batch_dag.py",
    "tests/test_privacy.py",
    "tests/test_faults.py",
    "tests/test_browser_admin.py",
    "tests/modelling/test_framing.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: place for place, name in enumerate(LONG_FILES_FIRST)}

    def order(item):
        path = Path(os.path.relpath(item.path, PROJECT_ROOT)).as_posix()
        return rank.get(path, len(rank))

    items.sort(key=order)  # stable: the order inside a file, and of the other files, is kept
