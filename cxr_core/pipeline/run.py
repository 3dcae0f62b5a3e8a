"""ingest >> train >> evaluate, then register the candidate and let the quality gate decide on promotion.

This is the single implementation every driver calls: ``python -m cxr_core pipeline``, the Retrain
page's background job and the Airflow DAG (stage by stage). ``dvc repro`` runs the same three stage
functions through ``training/`` and leaves registration to ``python -m cxr_core models register``.
"""

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from cxr_core.errors import CxrError
from cxr_core.fsutil import atomic_directory, write_json_atomic
from cxr_core.registry import audit
from cxr_core.registry.card import INGEST_SUMMARY_FILE, render_model_card
from cxr_core.settings import Layout, project_relative

CANDIDATE_FILES = (Layout.MODEL, Layout.TFLITE, Layout.OOD, Layout.HISTORY_CSV, Layout.HISTORY_JSON)


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
    point = report.get("operating_point") if isinstance(report.get("operating_point"), dict) else report
    per_class = None
    if all(isinstance(point.get(k), int) for k in ("tp", "fp", "tn", "fn")):
        per_class = {"Normal": point["tn"] + point["fp"], "Tuberculosis": point["tp"] + point["fn"]}
    return {
        "test_images": report.get("n"),
        "test_per_class": per_class,
        **{key: report.get(key) for key in keys},
        "framing": _robustness(report.get("framing"), "refused_after_reframing", ("share",)),
        "strips_and_markers": _robustness(report.get("strips_and_markers"), "refused_after_change",
                                          ("flipped_share", "peak_on_strip_share")),
        "held_out_markers": _robustness(report.get("held_out_markers"), "refused_after_change", ("flipped_share",)),
    }  # fmt: skip


def _robustness(section: object, refused_key: str, shares: tuple[str, ...]) -> dict | None:
    """What the gate reads of a re-read of the test films: shares of the films scored after the change,
    and the refused share of all the films tried (evaluation records the refused apart, as a count).
    None when the evaluation did not measure it at all (it predates the measure): the gate says so."""
    if not isinstance(section, dict) or not section:
        return None
    films, refused = int(section.get("films") or 0), section.get(refused_key)
    tried = films + int(refused or 0)
    summary = {"films": films, "tried": tried, **{key: section.get(key) for key in shares}}
    summary["refused_share"] = round(int(refused) / tried, 4) if tried and refused is not None else None
    if "maps_with_peak" in section:  # reports before 2026-12-05 counted blank maps as "not on the strip"
        summary["maps_with_peak"] = section["maps_with_peak"]
    return summary


def current_metrics_on(ingest_dir: Path, registry, version: str) -> dict:
    """The serving model's figures on the candidate's own test split: a like-for-like comparison.

    Raises :class:`~cxr_core.errors.CxrError` when the model in use cannot score these films (a
    damaged file, another input size): the gate then fails closed instead of comparing with figures
    measured on other films.
    """
    from cxr_core import metrics
    from cxr_core.errors import CxrError
    from cxr_core.modelling.predictor import Predictor
    from cxr_core.pipeline.evaluate import same_preprocessing, score_films_through_own_path, score_split

    try:
        predictor = Predictor(registry.version_dir(version))
        if same_preprocessing(predictor, ingest_dir):
            labels, probabilities, _, _, _ = score_split(ingest_dir, predictor, "test")  # the model loaded once
        else:  # another input path (say whole film vs lung crop): each model sees the films its own way
            labels, probabilities = score_films_through_own_path(ingest_dir, predictor)
            if len(labels) == 0:
                raise CxrError("it could read none of the test films")
    except (ValueError, OSError, CxrError) as error:
        raise CxrError(
            f"the model in use ({version}) could not be scored on the candidate's test films: {error}"
        ) from error
    return summarise(metrics.evaluate(labels, probabilities, predictor.threshold, n_boot=0))


def run_pipeline(
    data_path: str | Path,
    work_dir: str | Path,
    params: dict,
    progress: Callable[[dict], None] | None = None,
    models_root: str | Path | None = None,
    promote: str = "gate",
    gate_policy: dict | None = None,
    actor: str | None = None,
    override_reason: str | None = None,
) -> dict:
    """Run all stages on ``data_path`` and register the result; ``promote`` is gate or never.

    The gate is the server's policy (:func:`cxr_core.registry.gate.server_policy`); ``gate_policy``
    and ``params["gate"]`` may only make it stricter. ``override_reason`` promotes a candidate that
    did not pass, on an administrator's audited word.
    """
    from cxr_core.pipeline.evaluate import run_evaluate
    from cxr_core.pipeline.ingest import run_ingest
    from cxr_core.pipeline.train import run_train
    from cxr_core.registry.store import Registry

    def report(event: dict) -> None:
        if progress:
            progress(event)

    from cxr_core.pipeline.dataset_roots import allowed_dataset_path

    data_path = allowed_dataset_path(data_path)  # every driver, the Retrain page's jobs included
    work_dir = Path(work_dir)
    report({"stage": "ingest"})
    ingest_summary = run_ingest(data_path, work_dir / "ingest", params.get("ingest"), progress=progress)
    report({"stage": "train", "ingest": {k: ingest_summary[k] for k in ("images", "skipped", "duplicates")}})
    run_train(work_dir / "ingest", work_dir / "model", params.get("train"), progress=progress)
    report({"stage": "evaluate"})
    run_evaluate(work_dir / "ingest", work_dir / "model", work_dir / "evaluate", params.get("evaluate"))
    report({"stage": "register"})
    registry = Registry(models_root) if models_root else Registry()
    return register_candidate(
        work_dir, params, registry, promote, gate_policy=gate_policy, actor=actor, override_reason=override_reason
    )


def register_candidate(
    work_dir: str | Path,
    params: dict,
    registry,
    promote: str = "gate",
    gate_policy: dict | None = None,
    actor: str | None = None,
    override_reason: str | None = None,
) -> dict:
    """Gate a finished run against the serving model, register it, and promote it if allowed.

    Safe to repeat (an Airflow retry, a re-run after a crash): the gate verdict is kept in
    ``work/gate.json`` keyed by the model file's checksum, so a retry after promotion never compares
    the model with itself, and a model already in the registry is not registered twice. The verdict is
    also filed in the registry beside the version, bound to its weights, which is what
    :meth:`~cxr_core.registry.store.Registry.promote` checks. ``promote="always"`` is gone: promoting a
    candidate that did not pass needs ``override_reason`` (audited).
    """
    if promote not in ("gate", "never"):
        raise CxrError(
            f"promote={promote!r} is not allowed: use 'gate' or 'never' (a candidate that fails the gate "
            "is promoted only with an explicit --override-gate REASON)"
        )
    from cxr_core.fsutil import write_json_atomic
    from cxr_core.registry.gate import effective_floors, policy_stamp, quality_gate, server_policy
    from cxr_core.registry.store import sha256_file

    policy = server_policy()
    floors, notes = effective_floors(policy, gate_policy)
    floors, more_notes = effective_floors(floors, params.get("gate"))
    notes += more_notes

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
    same_rules = decision.get("floors") == floors
    if decision.get("model_sha256") != digest or not still_valid or not same_rules:
        current_metrics, scoring_error = None, None
        if current:
            try:
                current_metrics = current_metrics_on(work_dir / "ingest", registry, current)
            except CxrError as error:
                scoring_error = str(error)
        gate = quality_gate(candidate_metrics, current_metrics, floors)
        if scoring_error:  # fail closed: no comparison is not a passed comparison
            gate.passed = False
            gate.reasons.append(scoring_error)
        decision = {
            "model_sha256": digest,
            "compared_with": current,
            "registry_stamp": registry.pointer_stamp(),
            "policy": policy_stamp(policy),
            "floors": floors,
            "notes": notes,
            "current_metrics": current_metrics,
            "passed": gate.passed,
            "reasons": gate.reasons,
            "checks": gate.checks,
        }
        write_json_atomic(decision_file, decision)
        fresh_verdict = True
    else:
        fresh_verdict = False

    version = registered
    if version is None:
        version = registry.new_version_name()
        registry.register(assemble_candidate(work_dir, version), version=version)
        audit.record("register", root=registry.root, version=version, actor=actor)
    registry.record_verdict(version, decision)
    if fresh_verdict:
        audit.record("gate_verdict", root=registry.root, version=version, previous=current, actor=actor,
                     outcome="passed" if decision["passed"] else "failed", reasons=decision["reasons"],
                     floors=floors, model_sha256=digest, policy=decision["policy"])  # fmt: skip
    overridden = bool(override_reason and override_reason.strip()) and not decision["passed"]
    promoted = promote == "gate" and (bool(decision["passed"]) or overridden)
    if promoted and registry.current_version() != version:
        registry.promote(version, actor=actor, override_reason=override_reason if overridden else None)
    return {
        "version": version,
        "compared_with": decision["compared_with"],
        "current_metrics": decision.get("current_metrics"),
        "gate": {
            k: decision.get(k)
            for k in ("passed", "reasons", "checks", "floors", "notes", "policy", "registry_stamp")
        },  # fmt: skip
        "promoted": promoted,
        "metrics": candidate_metrics,
    }
