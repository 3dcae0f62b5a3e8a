"""Airflow 3 DAG ``tb_pipeline``: data_ingestion >> model_trainer >> model_testing >> register_model.

The stages are the project's own (``python -m training.ingest|train|evaluate``, the same CLIs that
``dvc repro`` and the README use); registration uses :func:`cxr_core.pipeline.run.register_candidate`,
the gate the dashboard's Retrain page and the CLI apply under the server's policy (never below the WHO
floors, whatever the run's params ask), files the verdict with the model's sha256, and promotes the new
version only through ``Registry.promote``, which accepts it only with that current pass.

Two environments, on purpose: this file is parsed by Airflow in ``airflow-venv/`` (or the Airflow
image) and imports nothing heavier than ``airflow.sdk`` at the top level, so parsing stays fast and
never touches TensorFlow. Each stage runs in the project environment (``.venv``, or
``$CXR_PROJECT_PYTHON``) as a child process whose output streams into the task log. Tasks exchange
only small JSON through XCom: paths, the data fingerprint, the model's sha256 and a few metrics.

Retry safety: every stage writes into a hidden staging folder and renames it into place when complete
(``cxr_core.fsutil.atomic_directory``), so a retried task replaces its output whole or leaves the old
one; staging folders left by a killed try are removed before the next try starts. Registration
records its gate decision next to the run's outputs and reuses an already registered copy of the same
model, so a retry neither registers twice nor re-judges a model against itself.

Environment (read at parse time, cheap):
``CXR_PROJECT_ROOT`` project folder (default: two levels above this file) ·
``CXR_PROJECT_PYTHON`` interpreter of the project environment (default ``<root>/.venv/bin/python``) ·
``CXR_AIRFLOW_WORK_DIR`` where each run keeps its outputs (default ``<root>/work/airflow``) ·
``CXR_PARAMS_FILE`` base settings (default ``<root>/params.yaml``) ·
``CXR_MODELS_DIR`` the model registry (read by the project code; default ``<root>/models``).
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

from airflow.sdk import Param, dag, get_current_context, task

if str(Path(__file__).resolve().parent) not in sys.path:  # the dags folder, when loaded by file path
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from cxr_dag_support import ON_DEMAND, PROJECT_PYTHON, PROJECT_ROOT, read_json, run_dir, run_project  # noqa: E402

PARAMS_FILE = Path(os.environ.get("CXR_PARAMS_FILE") or PROJECT_ROOT / "params.yaml")


def _base_params() -> dict:
    """The base params file (complete: it is generated from ``cxr_core/settings.py``), read with PyYAML."""
    import yaml

    with open(PARAMS_FILE) as handle:
        return yaml.safe_load(handle) or {}


def _default(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        node = node[part]
    return node


_BASE = _base_params()

# The trigger form: each field is named by the setting it overrides (``train.epochs``), so the run's
# params file is made by the project's own ``python -m cxr_core params --set KEY=VALUE`` and this file
# holds no copy of the settings' defaults or of how form values map onto them.
# (setting, JSON-schema type and bounds, title, description); the default is the params file's value.
_FORM = [
    ("data.path", {"type": "string", "minLength": 1}, "Dataset",
     "Kaggle folder (Normal/ + Tuberculosis/), NLM folder, CSV manifest or .zip. "
     "Relative paths are relative to the project folder."),
    ("train.epochs", {"type": "integer", "minimum": 1, "maximum": 500}, "Training epochs", None),
    ("train.batch_size", {"type": "integer", "minimum": 1, "maximum": 1024}, "Batch size", None),
    ("train.learning_rate", {"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "Learning rate", None),
    ("train.patience", {"type": "integer", "minimum": 1}, "Early-stopping patience", None),
    ("train.threshold.min_sensitivity", {"type": "number", "minimum": 0.5, "maximum": 1},
     "Threshold: sensitivity floor",
     "Sensitivity floor used to choose the decision threshold on the validation split."),
    ("evaluate.n_boot", {"type": "integer", "minimum": 0, "maximum": 20000}, "Bootstrap resamples", None),
    ("ingest.workers", {"type": "integer", "minimum": 0, "maximum": 64}, "Ingest workers",
     "0 = one per CPU core."),
]  # fmt: skip
DAG_PARAMS = {
    name: Param(_default(_BASE, name), title=title, description=description, **schema)
    for name, schema, title, description in _FORM
}
DAG_PARAMS["promote"] = Param(
    "gate",
    enum=["gate", "never"],
    description="gate: promote only if the quality gate passes; never: register without promoting.",
)


# ------------------------------------------------------------------------------------------ helpers
# These run inside the task process (airflow-venv): standard library and PyYAML, no project imports.


def _clear_leftovers(work_dir: Path, name: str) -> None:
    """Remove staging folders of an earlier try that was killed before it could clean up after itself."""
    import shutil

    for pattern in (f".{name}.staging-*", f".{name}.retired-*"):
        for leftover in work_dir.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _run_stage_into(ingest: dict, stage: str, folder: str, *args: str) -> Path:
    """``python -m cxr_core <stage> ... --out <run>/<folder>`` with the run's params, after removing what
    a killed earlier try of this task left behind."""
    work_dir = Path(ingest["work_dir"])
    _clear_leftovers(work_dir, folder)
    out = work_dir / folder
    run_project("cxr_core", stage, *args, "--out", str(out), "--params", ingest["params_file"])
    return out


def _write_run_params(target: Path, settings: dict) -> None:
    """The run's own params file (kept for the record): the base file with the form's settings applied,
    written by the project's command line so that only ``cxr_core.settings`` knows how to merge them."""
    overrides = [f"{key}={value}" for key, value in settings.items() if key != "promote"]
    run_project(
        "cxr_core", "params", "--params", str(PARAMS_FILE), *(f"--set={item}" for item in overrides),
        "--out", str(target),
    )  # fmt: skip


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


# -------------------------------------------------------------------------------------------- tasks


@task(multiple_outputs=False, retries=2, execution_timeout=timedelta(hours=2))
def data_ingestion() -> dict:
    """Decode, check and preprocess the dataset into uint8 shards with duplicate-aware splits."""
    context = get_current_context()
    settings = dict(context["params"])
    work_dir = run_dir(context["run_id"])
    params_file = work_dir / "params.yaml"
    _write_run_params(params_file, settings)
    _clear_leftovers(work_dir, "ingest")
    ingest_dir = work_dir / "ingest"
    data = Path(settings["data.path"]).expanduser()
    data = data if data.is_absolute() else PROJECT_ROOT / data
    run_project(
        "cxr_core", "ingest", "--data", str(data), "--out", str(ingest_dir), "--params", str(params_file)
    )
    summary = read_json(ingest_dir / "summary.json")
    split_sizes = {
        split: {label: sum(by_source.values()) for label, by_source in labels.items()}
        for split, labels in summary.get("counts", {}).items()
    }
    return {
        "work_dir": str(work_dir),
        "params_file": str(params_file),
        "ingest_dir": str(ingest_dir),
        "data_path": summary["data_path"],
        "layout": summary.get("layout"),
        "data_fingerprint": summary["data_fingerprint"],
        "images": summary["images"],
        "skipped": summary["skipped"],
        "duplicates": summary.get("duplicates"),
        "split_sizes": split_sizes,
    }


@task(multiple_outputs=False, retries=2, execution_timeout=timedelta(hours=8))
def model_trainer(ingest: dict) -> dict:
    """Train the CNN on the shards and choose the decision threshold on the validation split."""
    model_dir = _run_stage_into(ingest, "train", "model", "--ingest", ingest["ingest_dir"])
    metadata = read_json(model_dir / "metadata.json")
    if metadata.get("data_fingerprint") != ingest["data_fingerprint"]:
        raise RuntimeError(
            "the trained model does not come from this run's ingested data (fingerprint differs)"
        )
    return {
        "model_dir": str(model_dir),
        "model_sha256": metadata["model_sha256"],  # the trainer hashed the file it wrote
        "data_fingerprint": metadata["data_fingerprint"],
        "threshold": _round(metadata["threshold"], 6),
        "threshold_rule": metadata.get("threshold_rule"),
        "val_auc": _round(metadata.get("val_auc")),
        "epochs_run": metadata.get("epochs_run"),
        "best_epoch": metadata.get("best_epoch"),
        "train_seconds": metadata.get("train_seconds"),
    }


@task(multiple_outputs=False, retries=2, execution_timeout=timedelta(hours=1))
def model_testing(ingest: dict, model: dict) -> dict:
    """Score the held-out test split: metrics with confidence intervals, plots and per-image predictions."""
    eval_dir = _run_stage_into(
        ingest, "evaluate", "evaluate", "--ingest", ingest["ingest_dir"], "--model", model["model_dir"]
    )
    report = read_json(eval_dir / "metrics.json")
    op = {**(report.get("operating_point") or {}), **report}  # operating-point keys, nested or top level
    ci = report.get("roc_auc_ci")
    return {
        "evaluate_dir": str(eval_dir),
        "test_images": report.get("n"),
        "threshold": model["threshold"],
        "roc_auc": _round(report.get("roc_auc")),
        "roc_auc_ci": [_round(v) for v in ci] if isinstance(ci, list | tuple) else None,
        "pr_auc": _round(report.get("pr_auc")),
        "sensitivity": _round(op.get("sensitivity")),
        "specificity": _round(op.get("specificity")),
        "who_minimum_met": report.get("who_minimum_met"),
    }


@task.external_python(
    python=PROJECT_PYTHON,
    expect_airflow=False,
    multiple_outputs=False,
    retries=2,
    execution_timeout=timedelta(minutes=30),
)
def register_model(
    project_root: str, ingest: dict, model: dict, evaluation: dict, promote: str, run_name: str
) -> dict:
    """Register the candidate; promote it only if the quality gate passes (runs in the project venv).

    Airflow copies this function's source into a script for the project interpreter, so it imports
    everything it uses itself and refers to nothing else in this file.
    """
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, project_root)
    from cxr_core.pipeline.run import register_candidate
    from cxr_core.registry.store import Registry
    from cxr_core.settings import load_params

    params = load_params(ingest["params_file"])
    outcome = register_candidate(
        Path(ingest["work_dir"]), params, Registry(), promote=promote, actor=f"airflow:{run_name}"
    )
    registry = Registry()
    if registry.metadata(outcome["version"]).get("model_sha256") != model["model_sha256"]:
        raise RuntimeError("the registered model.keras is not the file model_trainer produced")
    result = {
        "version": outcome["version"],
        "promoted": outcome["promoted"],
        "current_version": registry.current_version(),
        "compared_with": outcome["compared_with"],
        "gate": outcome["gate"],
        "verdict_model_sha256": (registry.verdict(outcome["version"]) or {}).get("model_sha256"),
        "data_fingerprint": ingest["data_fingerprint"],
        "model_sha256": model["model_sha256"],
        "roc_auc": evaluation["roc_auc"],
        "sensitivity": evaluation["sensitivity"],
        "specificity": evaluation["specificity"],
    }
    return json.loads(json.dumps(result))  # plain JSON types only: the Airflow side has no numpy


# ---------------------------------------------------------------------------------------------- DAG


@dag(
    dag_id="tb_pipeline",
    max_active_runs=1,
    params=DAG_PARAMS,
    tags=["cxr", "training"],
    doc_md=__doc__,
    **ON_DEMAND,
)
def tb_pipeline():
    ingest = data_ingestion()
    model = model_trainer(ingest)
    evaluation = model_testing(ingest, model)
    register_model(str(PROJECT_ROOT), ingest, model, evaluation, "{{ params.promote }}", "{{ run_id }}")


tb_pipeline_dag = tb_pipeline()
