"""The Airflow DAG (training/dags/tb_pipeline.py), run for real through airflow-venv/.

Airflow has its own virtual environment, so these tests (in the project venv) drive it by subprocess:
small scripts executed with ``airflow-venv/bin/python`` parse the DAG or call ``dag.test()`` and print
one JSON line summarising task states, tries and XCom values. Every run uses a throw-away
``AIRFLOW_HOME`` with SQLite (``airflow db migrate`` first), a temporary model registry
(``CXR_MODELS_DIR``) and work folder, and a tiny real dataset in the Kaggle layout.
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml
from tools import missing

from cxr_core.registry.store import Registry, sha256_file
from cxr_core.settings import load_params, set_dotted

PROJECT_ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_PYTHON = PROJECT_ROOT / "airflow-venv" / "bin" / "python"
DAG_FILE = PROJECT_ROOT / "training" / "dags" / "tb_pipeline.py"
TASKS = ["data_ingestion", "model_trainer", "model_testing", "register_model"]
MAX_XCOM_BYTES = 4096

pytestmark = pytest.mark.airflow


@pytest.fixture(autouse=True)
def airflow_environment():
    if not AIRFLOW_PYTHON.exists():
        missing("airflow-venv/ is missing: run `bash scripts/setup_airflow.sh` (scripts/test.sh does it)")


# Parses the DAG file the way the dag-processor does and reports its shape and cost.
PARSE_CHECK = textwrap.dedent(
    """
    import importlib.util, json, sys, time
    dag_file = sys.argv[1]
    started = time.perf_counter()
    import airflow.sdk  # noqa: F401  (Airflow's own import cost, paid once by the dag-processor)
    sdk_seconds = time.perf_counter() - started
    baseline = set(sys.modules)
    started = time.perf_counter()
    spec = importlib.util.spec_from_file_location("tb_pipeline_parse_check", dag_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module_seconds = time.perf_counter() - started
    new_modules = sorted({name.split(".")[0] for name in set(sys.modules) - baseline})

    from airflow.dag_processing.dagbag import DagBag
    started = time.perf_counter()
    bag = DagBag(dag_folder=dag_file)
    dagbag_seconds = time.perf_counter() - started
    dag = bag.dags.get("tb_pipeline")
    print(json.dumps({
        "sdk_seconds": sdk_seconds,
        "module_seconds": module_seconds,
        "dagbag_seconds": dagbag_seconds,
        "new_top_level_modules": new_modules,
        "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        "dag_ids": sorted(bag.dag_ids),
        "tasks": {
            t.task_id: {"downstream": sorted(t.downstream_task_ids), "retries": t.retries,
                        "operator": type(t).__name__}
            for t in (dag.tasks if dag else [])
        },
        "params": dict(dag.params) if dag else {},
        "timetable": type(dag.timetable).__name__ if dag else None,
    }))
    """
)

# Runs one DAG run with dag.test() and prints a JSON summary of what the metadata database holds: one
# entry per task instance (mapped ones by map index) and per XCom. Shared with tests/test_batch_dag.py.
RUNNER = textwrap.dedent(
    """
    import importlib.util, json, sys
    from datetime import timedelta

    dag_file, conf, prefix, dag_name = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    spec = importlib.util.spec_from_file_location(dag_name + "_under_test", dag_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = getattr(module, dag_name)
    for task in dag.tasks:  # retry quickly: the test waits for the retry in real time
        if hasattr(task, "partial_kwargs"):  # a mapped task keeps its arguments here
            task.partial_kwargs["retry_delay"] = timedelta(seconds=1)
        else:
            task.retry_delay = timedelta(seconds=1)

    from airflow import settings
    settings.configure_orm()
    run = dag.test(run_conf=conf)

    from sqlalchemy import select
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == run.run_id)
        ).all()
        rows = session.scalars(
            select(XComModel).where(XComModel.dag_id == dag.dag_id, XComModel.run_id == run.run_id)
        ).all()
        summary = {
            "run_id": run.run_id,
            "state": str(run.state),
            "tasks": [{"task_id": ti.task_id, "map_index": ti.map_index, "state": str(ti.state),
                       "try_number": ti.try_number} for ti in tis],
            "xcom": [{"task_id": row.task_id, "map_index": row.map_index, "key": row.key,
                      "value": XComModel.deserialize_value(row),
                      "stored_bytes": len(json.dumps(row.value, default=str))} for row in rows],
        }
    print(prefix + json.dumps(summary, default=repr), flush=True)
    """
)
SUMMARY_PREFIX = "AIRFLOW_TEST_SUMMARY "


def dag_test(dag_file: Path, dag_name: str, conf: dict, env: dict, timeout: float) -> dict:
    """One ``dag.test()`` run of the DAG object ``dag_name`` in ``dag_file``; its summary (see RUNNER)."""
    done = run_airflow_python(RUNNER, str(dag_file), json.dumps(conf), SUMMARY_PREFIX, dag_name, env=env,
                              timeout=timeout)  # fmt: skip
    output = done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith(SUMMARY_PREFIX)]
    assert done.returncode == 0 and lines, f"dag.test() failed (exit {done.returncode}):\n{output[-6000:]}"
    summary = json.loads(lines[-1][len(SUMMARY_PREFIX) :])
    summary["output_tail"] = output[-6000:]  # for the message when a task failed
    return summary


# Placed on PYTHONPATH for the retry test only: the first training attempt dies hard (os._exit, as an
# OOM kill would) right after its first epoch, when its staging folder holds a half-written model.
CRASH_ONCE_HOOK = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, json, os, sys
    MARKER = os.environ.get("CXR_TEST_CRASH_MARKER")

    class _WrapTrain(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "cxr_core.pipeline.train" or not MARKER or os.path.exists(MARKER):
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            real_exec = spec.loader.exec_module

            def exec_module(module):
                real_exec(module)
                real_run_train = module.run_train

                def run_train(ingest_dir, out_dir, params=None, progress=None):
                    def crash_after_first_epoch(event):
                        if progress:
                            progress(event)
                        if event.get("epoch") == 1:
                            parent = os.path.dirname(os.path.abspath(out_dir))
                            staging = {
                                entry: sorted(os.listdir(os.path.join(parent, entry)))
                                for entry in os.listdir(parent) if ".staging-" in entry
                            }
                            with open(MARKER, "w") as handle:
                                json.dump({"staging": staging}, handle)
                            os._exit(3)
                    return real_run_train(ingest_dir, out_dir, params, progress=crash_after_first_epoch)

                module.run_train = run_train

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _WrapTrain())
    """
)


def airflow_env(tmp: Path, **extra: str) -> dict:
    """A clean environment for Airflow: nothing inherited from a real AIRFLOW_HOME or deployment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CXR_", "PYTHONPATH"))}
    home = tmp / "airflow-home"
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(DAG_FILE.parent),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__CORE__PARALLELISM="2",
        TF_CPP_MIN_LOG_LEVEL="2",
        CXR_PROJECT_PYTHON=sys.executable,
        CXR_DATASET_ROOTS=tempfile.gettempdir(),  # this deployment reads datasets from the test's tmp folders
        CXR_LUNG_CACHE_DIR=str(tmp / "lung-cache"),  # never the project's work/
    )
    env.update(extra)
    return env


def run_airflow_python(code: str, *args: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(AIRFLOW_PYTHON), "-c", code, *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_MIGRATED: dict[str, Path] = {}  # one migrated SQLite database per test session, copied for each test


def migrate(env: dict) -> None:
    """``airflow db migrate`` must run before dag.test() or ``airflow dags test`` (Airflow 3.3).

    Migrated once per session into a template; each test gets a copy of that fresh database in its own
    AIRFLOW_HOME (the schema does not depend on where the file lies), not a migration of its own.
    """
    import shutil

    if "db" not in _MIGRATED:
        template = Path(tempfile.mkdtemp(prefix="cxr-airflow-db-"))
        done = subprocess.run(
            [str(AIRFLOW_PYTHON.parent / "airflow"), "db", "migrate"],
            env={**env, "AIRFLOW_HOME": str(template),
                 "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{template / 'airflow.db'}"},
            capture_output=True,
            text=True,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        _MIGRATED["db"] = template / "airflow.db"
    home = Path(env["AIRFLOW_HOME"])
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{home / 'airflow.db'}"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_MIGRATED["db"], home / "airflow.db")


def write_params(path: Path, **gate: float) -> Path:
    """The project's params.yaml made small for CI (2 epochs, 50 bootstrap resamples), gate as given."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["train"]["epochs"] = 2
    params["evaluate"]["n_boot"] = 50
    params["gate"].update(gate)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_dag(
    tmp: Path, data: Path, params_file: Path, conf: dict, **extra_env: str
) -> tuple[dict, dict, dict]:
    env = airflow_env(
        tmp,
        CXR_MODELS_DIR=str(tmp / "models"),
        CXR_AIRFLOW_WORK_DIR=str(tmp / "work"),
        CXR_PARAMS_FILE=str(params_file),
        **extra_env,
    )
    migrate(env)
    summary = dag_test(DAG_FILE, "tb_pipeline_dag", {"data.path": str(data), **conf}, env, timeout=900)
    # the training DAG maps nothing: one instance and one return value per task, keyed by task id
    summary["tasks"] = {t["task_id"]: {"state": t["state"], "try_number": t["try_number"]} for t in summary["tasks"]}
    summary["xcom"] = {f"{x['task_id']}.{x['key']}": x for x in summary["xcom"]}
    xcom = {key.removesuffix(".return_value"): item["value"] for key, item in summary["xcom"].items()}
    return summary, xcom, env


def assert_small_json_xcoms(summary: dict) -> None:
    """XCom holds paths, fingerprints and a few numbers: never arrays, models or long text."""

    def walk(value, where):
        if isinstance(value, dict):
            for key, item in value.items():
                assert isinstance(key, str), where
                walk(item, f"{where}.{key}")
        elif isinstance(value, list):
            assert len(value) <= 10, f"{where} is a list of {len(value)} items"
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")
        else:
            assert value is None or isinstance(value, str | int | float | bool), f"{where}: {type(value)}"
            if isinstance(value, str):
                assert len(value) < 500, f"{where} is a long string"

    assert set(summary["xcom"]) == {f"{task}.return_value" for task in TASKS}
    for key, item in summary["xcom"].items():
        assert item["stored_bytes"] < MAX_XCOM_BYTES, f"{key} stores {item['stored_bytes']} bytes"
        json.dumps(item["value"], allow_nan=False)
        walk(item["value"], key)


@pytest.fixture(scope="module")
def tiny_params(tmp_path_factory) -> Path:
    """The server's params file asks for floors of zero: the WHO floors (0.90, 0.70) apply all the same."""
    return write_params(
        tmp_path_factory.mktemp("params") / "params.yaml",
        min_sensitivity=0.0,
        min_specificity=0.0,
        min_test_films=0,
        min_test_per_class=0,
    )


def test_dag_file_parses_quickly_without_heavy_imports(tmp_path):
    done = run_airflow_python(PARSE_CHECK, str(DAG_FILE), env=airflow_env(tmp_path), timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert report["import_errors"] == {}
    assert report["dag_ids"] == ["tb_pipeline"]
    assert report["timetable"] == "NullTimetable"  # triggered on demand, never on a schedule
    tasks = report["tasks"]
    assert set(tasks) == set(TASKS)
    assert "model_trainer" in tasks["data_ingestion"]["downstream"]
    assert "model_testing" in tasks["model_trainer"]["downstream"]
    assert tasks["model_testing"]["downstream"] == ["register_model"]
    assert tasks["register_model"]["downstream"] == []
    assert all(task["retries"] >= 1 for task in tasks.values())
    assert {"data.path", "train.epochs", "train.batch_size", "train.learning_rate", "promote"} <= set(
        report["params"]
    )
    # Every form field names a real setting, and its default is that setting's value in params.yaml.
    base = load_params(PROJECT_ROOT / "params.yaml")
    for name, default in report["params"].items():
        if name != "promote":
            assert set_dotted(base, name, default) == base, name
    heavy = {"tensorflow", "keras", "numpy", "pandas", "sklearn", "cv2", "cxr_core", "training"}
    # What keeps parsing fast is importing nothing heavy at top level; the seconds are reported, not
    # asserted (no timed asserts: a loaded CI machine would make them flaky).
    assert heavy.isdisjoint(report["new_top_level_modules"]), report["new_top_level_modules"]
    print(f"DAG parse: module {report['module_seconds']:.3f} s, DagBag {report['dagbag_seconds']:.3f} s")


@pytest.mark.slow
def test_dag_runs_end_to_end_and_promotes_through_the_gate(tmp_path, kaggle_tree, tiny_params):
    summary, xcom, env = run_dag(tmp_path, kaggle_tree, tiny_params, {"train.epochs": 2, "ingest.workers": 2})

    assert summary["state"] == "success", summary["output_tail"]
    assert {task: info["state"] for task, info in summary["tasks"].items()} == dict.fromkeys(TASKS, "success")
    assert all(info["try_number"] == 1 for info in summary["tasks"].values())
    assert_small_json_xcoms(summary)

    ingest, model, evaluation, registered = (xcom[task] for task in TASKS)
    work = Path(ingest["work_dir"])
    assert work.parent == tmp_path / "work"
    assert ingest["images"] == len(list(kaggle_tree.rglob("*.png"))) and ingest["skipped"] == 0
    assert ingest["layout"] == "kaggle"
    for name in ("summary.json", "manifest.csv", "skipped.csv"):
        assert (work / "ingest" / name).is_file()
    assert list((work / "ingest" / "shards").glob("*.npy"))
    for name in ("model.keras", "metadata.json", "ood.npz", "history.json"):
        assert (work / "model" / name).is_file()
    for name in ("metrics.json", "predictions.csv"):
        assert (work / "evaluate" / name).is_file()
    assert list((work / "evaluate" / "plots").glob("*.json"))
    assert not list(work.glob(".*staging-*")), "staging folders left behind"

    run_params = yaml.safe_load((work / "params.yaml").read_text())
    assert run_params["train"]["epochs"] == 2 and run_params["data"]["path"] == str(kaggle_tree)
    assert model["epochs_run"] <= 2
    assert json.loads((work / "model" / "history.json").read_text())["loss"]
    metrics = json.loads((work / "evaluate" / "metrics.json").read_text())
    for key in ("roc_auc", "sensitivity", "specificity"):
        assert evaluation[key] == pytest.approx(metrics[key], abs=1e-4)
    assert evaluation["test_images"] == metrics["n"]

    # One fingerprint and one model file travel through every task.
    assert model["data_fingerprint"] == ingest["data_fingerprint"] == registered["data_fingerprint"]
    assert registered["model_sha256"] == model["model_sha256"] == sha256_file(work / "model" / "model.keras")

    # The registered version is the trained model, judged under the WHO floors whatever the params file
    # said, and served exactly when its verdict (filed with its weights' sha256) passed.
    registry = Registry(tmp_path / "models")
    version = registered["version"]
    registry.verify(version)
    assert registry.metadata(version)["model_sha256"] == model["model_sha256"]
    assert registry.metadata(version)["data_fingerprint"] == ingest["data_fingerprint"]
    floors = registered["gate"]["floors"]
    assert (floors["min_sensitivity"], floors["min_specificity"]) == (0.90, 0.70)
    verdict = registry.verdict(version)
    assert verdict["model_sha256"] == model["model_sha256"] and verdict["passed"] == registered["gate"]["passed"]
    assert registered["verdict_model_sha256"] == model["model_sha256"]
    assert registered["promoted"] == registered["gate"]["passed"]
    expected_current = version if registered["gate"]["passed"] else None
    assert registry.current_version() == expected_current == registered["current_version"]
    assert json.loads((work / "gate.json").read_text())["passed"] == registered["gate"]["passed"]

    # Running the last task again (as a retry after a lost worker would) registers nothing new.
    again = subprocess.run(
        [
            str(AIRFLOW_PYTHON.parent / "airflow"),
            "tasks",
            "test",
            "tb_pipeline",
            "register_model",
            summary["run_id"],
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = again.stdout + again.stderr
    assert again.returncode == 0 and "Task failed" not in output, output[-4000:]
    assert f"'version': '{version}'" in output
    assert [meta["version"] for meta in registry.versions()] == [version]
    assert registry.current_version() == expected_current


@pytest.mark.slow
def test_trainer_crash_is_retried_without_half_written_outputs(tmp_path, kaggle_tree):
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(CRASH_ONCE_HOOK)
    marker = tmp_path / "crashed.json"
    strict = write_params(tmp_path / "params.yaml", min_specificity=1.01)  # no model can pass this gate

    summary, xcom, _ = run_dag(
        tmp_path,
        kaggle_tree,
        strict,
        {"train.epochs": 2, "ingest.workers": 2},
        PYTHONPATH=str(hook_dir),
        CXR_TEST_CRASH_MARKER=str(marker),
    )

    # The first try died with a half-written model in its staging folder ...
    crashed = json.loads(marker.read_text())
    assert crashed["staging"], "the crash hook did not see a staging folder"
    assert any(name.startswith(".model.staging-") for name in crashed["staging"])
    # ... the retry succeeded, and nothing of the dead try is left.
    assert summary["state"] == "success"
    assert summary["tasks"]["model_trainer"] == {"state": "success", "try_number": 2}
    assert all(summary["tasks"][task]["try_number"] == 1 for task in TASKS if task != "model_trainer")
    assert_small_json_xcoms(summary)
    work = Path(xcom["data_ingestion"]["work_dir"])
    assert not list(work.glob(".*staging-*")) and not list(work.glob(".*retired-*"))
    model_dir = work / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        ["history.csv", "history.json", "metadata.json", "model.keras", "model.tflite", "ood.npz"]
    )
    # The serving twin is whole: its sha256 and the weights it was made from are the retry's own.
    trained = json.loads((model_dir / "metadata.json").read_text())
    assert sha256_file(model_dir / "model.tflite") == trained["tflite_sha256"]
    assert trained["tflite_model_sha256"] == sha256_file(model_dir / "model.keras")
    assert (
        len(json.loads((model_dir / "history.json").read_text())["loss"])
        == xcom["model_trainer"]["epochs_run"]
    )
    assert sha256_file(model_dir / "model.keras") == xcom["model_trainer"]["model_sha256"]

    # The gate refused this model: registered for the record, never promoted.
    registered = xcom["register_model"]
    assert registered["promoted"] is False and registered["gate"]["passed"] is False
    assert any("specificity" in reason for reason in registered["gate"]["reasons"])
    registry = Registry(tmp_path / "models")
    assert registry.current_version() is None and registered["current_version"] is None
    registry.verify(registered["version"])
