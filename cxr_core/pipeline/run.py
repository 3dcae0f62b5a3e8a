"""ingest >> train >> evaluate, then register the candidate and let the quality gate decide on promotion.

This is the single implementation every driver calls: ``python -m cxr_core pipeline``, the Retrain
page's background job and the Airflow DAG (stage by stage). ``dvc repro`` runs the same three stage
functions through ``training/`` and leaves registration to ``python -m cxr_core models register``.
"""

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from cxr_core.fsutil import atomic_directory, write_json_atomic
from cxr_core.registry.card import INGEST_SUMMARY_FILE, render_model_card
from cxr_core.settings import Layout, project_relative

CANDIDATE_FILES = (Layout.MODEL, Layout.OOD, Layout.HISTORY_CSV, Layout.HISTORY_JSON)


def assemble_candidate(work_dir: str | Path, version: str | None = None) -> Path:
    """Gather a finished run's model, metrics, plots and card into ``work/candidate`` for the registry."""
    work_dir = Path(work_dir)
    model_dir, eval_dir, ingest_dir = work_dir / "model", work_dir / "evaluate", work_dir / "ingest"
    metadata = json.loads((model_dir / Layout.METADATA).read_text())
    report = json.loads((eval_dir / Layout.METRICS).read_text())
    ingest_summary = json.loads((ingest_dir / Layout.SUMMARY).read_text())
    ingest_summary["data_path"] = project_relative(ingest_summary["data_path"])  # no machine's home folder
    metadata["metrics"] = summarise(report)
    metadata["version"] = version
    with atomic_directory(work_dir / "candidate") as staging:
        for name in CANDIDATE_FILES:
            if (model_dir / name).exists():
                shutil.copy2(model_dir / name, staging / name)
        shutil.copy2(eval_dir / Layout.METRICS, staging / Layout.METRICS)
        shutil.copy2(eval_dir / Layout.PREDICTIONS, staging / Layout.PREDICTIONS)
        shutil.copytree(eval_dir / Layout.PLOTS, staging / Layout.PLOTS)
        write_json_atomic(staging / INGEST_SUMMARY_FILE, ingest_summary)
        write_json_atomic(staging / Layout.METADATA, metadata)
        (staging / Layout.CARD).write_text(render_model_card(metadata, report, ingest_summary))
    return work_dir / "candidate"


def summarise(report: dict) -> dict:
    """The few figures the registry, the gate and the version list need, from a full metrics report."""
    keys = ("roc_auc", "roc_auc_ci", "pr_auc", "sensitivity", "sensitivity_ci", "specificity",
            "specificity_ci", "ppv", "npv", "accuracy", "threshold", "who_minimum_met")  # fmt: skip
    return {"test_images": report.get("n"), **{key: report.get(key) for key in keys}}


def current_metrics_on(ingest_dir: Path, registry, version: str) -> dict | None:
    """The serving model's figures on the candidate's own test split: a like-for-like comparison.

    A model whose input size differs (other params) cannot score these shards; then its recorded
    metrics are the only comparison left.
    """
    from cxr_core import metrics
    from cxr_core.errors import CxrError
    from cxr_core.pipeline.evaluate import score_split

    try:
        labels, probabilities, _, predictor = score_split(ingest_dir, registry.version_dir(version), "test")
    except (ValueError, OSError, CxrError):
        try:
            return registry.metadata(version).get("metrics")
        except (ValueError, OSError, CxrError):
            return None  # nothing to compare with: only the gate's absolute floors apply
    return summarise(metrics.evaluate(labels, probabilities, predictor.threshold, n_boot=0))


def run_pipeline(
    data_path: str | Path,
    work_dir: str | Path,
    params: dict,
    progress: Callable[[dict], None] | None = None,
    models_root: str | Path | None = None,
    promote: str = "gate",
) -> dict:
    """Run all stages on ``data_path`` and register the result; ``promote`` is gate, never or always."""
    from cxr_core.pipeline.evaluate import run_evaluate
    from cxr_core.pipeline.ingest import run_ingest
    from cxr_core.pipeline.train import run_train
    from cxr_core.registry.store import Registry

    def report(event: dict) -> None:
        if progress:
            progress(event)

    work_dir = Path(work_dir)
    report({"stage": "ingest"})
    ingest_summary = run_ingest(data_path, work_dir / "ingest", params.get("ingest"), progress=progress)
    report({"stage": "train", "ingest": {k: ingest_summary[k] for k in ("images", "skipped", "duplicates")}})
    run_train(work_dir / "ingest", work_dir / "model", params.get("train"), progress=progress)
    report({"stage": "evaluate"})
    run_evaluate(work_dir / "ingest", work_dir / "model", work_dir / "evaluate", params.get("evaluate"))
    report({"stage": "register"})
    registry = Registry(models_root) if models_root else Registry()
    return register_candidate(work_dir, params, registry, promote)


def register_candidate(work_dir: str | Path, params: dict, registry, promote: str = "gate") -> dict:
    """Gate a finished run against the serving model, register it, and promote it if allowed.

    Safe to repeat (an Airflow retry, a re-run after a crash): the gate verdict is kept in
    ``work/gate.json`` keyed by the model file's checksum, so a retry after promotion never compares
    the model with itself, and a model already in the registry is not registered twice.
    """
    from cxr_core.fsutil import write_json_atomic
    from cxr_core.registry.gate import quality_gate
    from cxr_core.registry.store import sha256_file

    work_dir = Path(work_dir)
    digest = sha256_file(work_dir / "model" / Layout.MODEL)
    candidate_metrics = summarise(json.loads((work_dir / "evaluate" / Layout.METRICS).read_text()))
    decision_file = work_dir / Layout.GATE
    decision = json.loads(decision_file.read_text()) if decision_file.exists() else {}
    registered = next((m["version"] for m in registry.versions() if m.get("model_sha256") == digest), None)
    current = registry.current_version()
    # A saved verdict holds only against the model it was taken against (or after this model's own
    # promotion, on a retry); if someone promoted or rolled back meanwhile, judge again.
    still_valid = decision.get("compared_with") == current or (registered and current == registered)
    if decision.get("model_sha256") != digest or not still_valid:
        current_metrics = current_metrics_on(work_dir / "ingest", registry, current) if current else None
        gate = quality_gate(candidate_metrics, current_metrics, params.get("gate", {}))
        decision = {
            "model_sha256": digest,
            "compared_with": current,
            "current_metrics": current_metrics,
            "passed": gate.passed,
            "reasons": gate.reasons,
            "checks": gate.checks,
        }
        write_json_atomic(decision_file, decision)

    version = registered
    if version is None:
        version = registry.new_version_name()
        registry.register(assemble_candidate(work_dir, version), version=version)
    promoted = promote == "always" or (promote == "gate" and bool(decision["passed"]))
    if promoted and registry.current_version() != version:
        registry.promote(version)
    return {
        "version": version,
        "compared_with": decision["compared_with"],
        "current_metrics": decision.get("current_metrics"),
        "gate": {k: decision[k] for k in ("passed", "reasons", "checks")},
        "promoted": promoted,
        "metrics": candidate_metrics,
    }
