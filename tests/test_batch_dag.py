"""The archive-screening DAG (training/dags/tb_batch_screening.py), run with ``dag.test()`` through
airflow-venv/ on real shared films, as tests/test_airflow_dag.py runs the training DAG.

The mapped ``predict_shard`` tasks run ``python -m cxr_core predict`` with the project's current model
(``models/``); each test keeps its shards few, since every shard pays TensorFlow's start-up once.
"""

import csv
import json
import shutil
import textwrap
from pathlib import Path

import pytest
from test_airflow_dag import AIRFLOW_PYTHON, airflow_env, dag_test, migrate, run_airflow_python
from tools import missing

from cxr_core.imaging.decode import IMAGE_EXTENSIONS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DAG_FILE = PROJECT_ROOT / "training" / "dags" / "tb_batch_screening.py"
OTHER_DAG = PROJECT_ROOT / "training" / "dags" / "tb_pipeline.py"
TASKS = {"plan_shards", "predict_shard", "merge_results"}

pytestmark = pytest.mark.airflow


@pytest.fixture(autouse=True)
def airflow_environment():
    if not AIRFLOW_PYTHON.exists():
        missing("airflow-venv/ is missing: run `bash scripts/setup_airflow.sh` (scripts/test.sh does it)")


PARSE_CHECK = textwrap.dedent(
    """
    import importlib.util, json, sys
    import airflow.sdk  # noqa: F401
    baseline = set(sys.modules)
    spec = importlib.util.spec_from_file_location("tb_batch_parse_check", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    new_modules = sorted({name.split(".")[0] for name in set(sys.modules) - baseline})
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1])
    dag = bag.dags.get("tb_batch_screening")
    print(json.dumps({
        "new_top_level_modules": new_modules,
        "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        "dag_ids": sorted(bag.dag_ids),
        "tasks": {t.task_id: {"downstream": sorted(t.downstream_task_ids), "retries": t.retries,
                              "mapped": hasattr(t, "expand_input"), "type": type(t).__name__} for t in dag.tasks},
        "params": sorted(dag.params),
        "image_extensions": sorted(module.IMAGE_EXTENSIONS),
    }))
    """
)

# On PYTHONPATH of the project interpreter for the retry test only: the first predict dies hard
# (os._exit, as an OOM kill would) after writing its first row, i.e. with a half-written output.
CRASH_ONCE_HOOK = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, json, os, sys
    MARKER = os.environ.get("CXR_TEST_CRASH_MARKER")

    class _WrapPredictor(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "cxr_core.modelling.predictor" or not MARKER or os.path.exists(MARKER):
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            real_exec = spec.loader.exec_module

            def exec_module(module):
                real_exec(module)
                real_predict_paths = module.predict_paths

                def predict_paths(paths, predictor, workers=None):
                    for row in real_predict_paths(paths, predictor, workers):
                        yield row
                        out = sys.argv[sys.argv.index("-o") + 1]
                        folder = os.path.dirname(out)
                        sys.stdout.flush()
                        listing = {name: os.path.getsize(os.path.join(folder, name))
                                   for name in os.listdir(folder)}
                        with open(MARKER, "w") as handle:
                            json.dump({"output": out, "listing": listing}, handle)
                        os._exit(3)

                module.predict_paths = predict_paths

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _WrapPredictor())
    """
)


def films_folder(root: Path, shared: Path, normals: int, tbs: int, corrupt: bool = True) -> Path:
    """A small archive of real shared films (nested, as archives are) and optionally a corrupt one."""
    manifest = list(csv.DictReader((shared / "manifest.csv").open()))
    picked = [row for row in manifest if row["label"] == "Normal" and row["source"] == "shenzhen"][:normals]
    picked += [row for row in manifest if row["label"] == "Tuberculosis" and row["source"] == "tbx11k"][:tbs]
    folder = root / "archive"
    for i, row in enumerate(picked):
        target = folder / f"batch-{i // 2}" / f"film-{i:03d}{Path(row['path']).suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared / row["path"], target)
    if corrupt:
        (folder / "batch-0" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    (folder / "README.txt").write_text("not a film: predict's folder rule skips it")
    return folder


def run_batch_dag(tmp: Path, conf: dict, **extra_env: str) -> dict:
    env = airflow_env(tmp, CXR_AIRFLOW_WORK_DIR=str(tmp / "work"), **extra_env)
    env.pop("CXR_MODELS_DIR", None)  # the project's current model
    migrate(env)
    return dag_test(DAG_FILE, "tb_batch_screening_dag", conf, env, timeout=600)


def check_merged_output(work: Path, films: list[Path], corrupt: list[Path]) -> dict:
    """One row per film in results.jsonl and results.csv, and a summary that counts them right."""
    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
    assert sorted(row["file"] for row in rows) == sorted(map(str, films))
    for row in rows:
        assert row["ok"] is (Path(row["file"]) not in corrupt), row
    with open(work / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["file"] for row in table] == [row["file"] for row in rows]
    summary = json.loads((work / "summary.json").read_text())
    ok = [row for row in rows if row["ok"]]
    assert summary["films"] == len(films) and summary["unreadable"] == len(corrupt)
    assert summary["scored"] == len(ok)
    labels = {label: sum(row["label"] == label for row in ok) for label in {row["label"] for row in ok}}
    assert summary["by_label"] == labels and sum(labels.values()) == len(ok)
    assert summary["tb_suspected"] == [row["file"] for row in ok if row["label"] == "Tuberculosis"]
    assert summary["unreadable_files"] == sorted(map(str, corrupt))
    predictions = work / "predictions"
    assert all(p.name.startswith("shard-") and p.suffix == ".jsonl" for p in predictions.iterdir())
    assert not [p for p in work.rglob("*") if ".partial-" in p.name], "partial files left behind"
    return summary


def test_batch_dag_parses_without_heavy_imports(tmp_path):
    done = run_airflow_python(PARSE_CHECK, str(DAG_FILE), env=airflow_env(tmp_path), timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert report["import_errors"] == {} and report["dag_ids"] == ["tb_batch_screening"]
    tasks = report["tasks"]
    assert set(tasks) == TASKS
    assert tasks["predict_shard"]["mapped"] and not tasks["merge_results"]["mapped"]
    assert tasks["plan_shards"]["downstream"] == ["merge_results", "predict_shard"]
    assert tasks["predict_shard"]["downstream"] == ["merge_results"]
    assert all(task["retries"] >= 1 for task in tasks.values())
    assert report["params"] == ["model", "shard_size", "source", "workers"]
    heavy = {"tensorflow", "keras", "numpy", "pandas", "sklearn", "cv2", "cxr_core", "training"}
    assert heavy.isdisjoint(report["new_top_level_modules"]), report["new_top_level_modules"]
    # The folder rule is the predict command's own.
    assert report["image_extensions"] == sorted(IMAGE_EXTENSIONS)


def test_the_two_dag_files_share_helpers_instead_of_copying_them():
    """The shared code lives once, in cxr_dag_support.py: no function body appears in both DAG files."""
    import ast

    def bodies(path: Path) -> dict[str, str]:
        tree = ast.parse(path.read_text())
        return {
            ast.dump(node.body[-1]): node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and len(node.body) > 2
        }

    assert not set(bodies(DAG_FILE)) & set(bodies(OTHER_DAG))
    for path in (DAG_FILE, OTHER_DAG):
        assert "from cxr_dag_support import" in path.read_text()
        assert "subprocess.Popen" not in path.read_text()


@pytest.mark.slow
def test_batch_dag_screens_a_folder_with_a_corrupt_film(tmp_path, shared_cxr):
    folder = films_folder(tmp_path, shared_cxr, normals=3, tbs=2)
    # automatic shards (shard_size 0): one per worker slot, here 2 slots for 6 films
    summary = run_batch_dag(tmp_path, {"source": str(folder), "workers": 2})
    assert summary["state"] == "success", summary["output_tail"]

    states = {(t["task_id"], t["map_index"]): (t["state"], t["try_number"]) for t in summary["tasks"]}
    assert states == {
        ("plan_shards", -1): ("success", 1),
        ("predict_shard", 0): ("success", 1),
        ("predict_shard", 1): ("success", 1),
        ("merge_results", -1): ("success", 1),
    }
    xcom = {(x["task_id"], x["map_index"]): x for x in summary["xcom"] if x["key"] == "return_value"}
    shards = xcom[("plan_shards", -1)]["value"]
    assert len(shards) == 2 and all(isinstance(path, str) and path.endswith(".json") for path in shards)
    assert all(item["stored_bytes"] < 2048 for item in xcom.values())

    films = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".txt")
    assert len(films) == 6
    work = Path(xcom[("merge_results", -1)]["value"]["work_dir"])
    assert work.parent == tmp_path / "work"
    merged = check_merged_output(work, films, [folder / "batch-0" / "corrupt.png"])
    assert xcom[("merge_results", -1)]["value"]["films"] == 6
    assert xcom[("merge_results", -1)]["value"]["tb_suspected"] == len(merged["tb_suspected"])
    plan = json.loads((work / "plan.json").read_text())
    assert (plan["films"], plan["shards"], plan["shard_size"], plan["workers"]) == (6, 2, 3, 2)


@pytest.mark.slow
def test_a_killed_shard_is_retried_without_a_half_written_output(tmp_path, shared_cxr):
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(CRASH_ONCE_HOOK)
    marker = tmp_path / "crashed.json"
    folder = films_folder(tmp_path, shared_cxr, normals=2, tbs=1, corrupt=False)
    listing = tmp_path / "archive" / "films.csv"
    films = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".txt")
    listing.write_text("path\n" + "".join(f"{p.relative_to(listing.parent)}\n" for p in films))

    summary = run_batch_dag(
        tmp_path,
        {"source": str(listing), "shard_size": 2},
        PYTHONPATH=str(hook_dir),
        CXR_TEST_CRASH_MARKER=str(marker),
    )

    # The first try died after writing one row: a partial file and no published output for its shard.
    crashed = json.loads(marker.read_text())
    partial = Path(crashed["output"]).name
    assert partial.startswith(".shard-0000") and ".jsonl.partial-" in partial, partial
    shard = partial[1:].split(".partial-")[0]  # shard-0000N.jsonl: dag.test() picks the order
    killed = int(shard.split("-")[1].split(".")[0])
    assert crashed["listing"][partial] > 0, "the killed try had not written its first row"
    assert shard not in crashed["listing"], "a shard output was published before it was complete"
    # The retry replaced it whole; nothing of the dead try is left, and the merge is complete.
    assert summary["state"] == "success", summary["output_tail"]
    tries = {(t["task_id"], t["map_index"]): t["try_number"] for t in summary["tasks"]}
    assert tries[("predict_shard", killed)] == 2 and tries[("predict_shard", 1 - killed)] == 1
    work = next((tmp_path / "work").iterdir())
    shard_rows = (work / "predictions" / shard).read_text().splitlines()
    expected = films[:2] if killed == 0 else films[2:]
    assert [json.loads(line)["file"] for line in shard_rows] == [str(p) for p in expected]
    check_merged_output(work, films, [])
