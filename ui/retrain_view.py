"""The Retrain page's view-model: a dataset path checked, a job's status as a person reads it, the gate's verdict."""

from __future__ import annotations

import re
import time
from pathlib import Path

from cxr_core.errors import CxrError

# --------------------------------------------------------------------------------- retrain jobs


def check_dataset_path(text: str) -> Path:
    """The dataset folder or zip a user typed: only inside the configured dataset roots (see
    :func:`cxr_core.pipeline.dataset_roots.allowed_dataset_path`), with a clear message otherwise."""
    from cxr_core.pipeline.dataset_roots import allowed_dataset_path

    return allowed_dataset_path(text)


STAGE_LABELS = {
    "ingest": "Reading and checking images",
    "train": "Training",
    "evaluate": "Evaluating on the held-out test images",
    "register": "Registering the candidate model",
}
STATE_LABELS = {
    "starting": "starting",
    "running": "running",
    "succeeded": "finished",
    "failed": "failed",
    "cancelled": "cancelled",
}
_STAGE_SPAN = {"ingest": (0.0, 0.1), "train": (0.1, 0.9), "evaluate": (0.9, 0.97), "register": (0.97, 1.0)}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    seconds = max(0, int(round(float(seconds))))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def job_view(status: dict, now: float | None = None) -> dict:
    """A job's status as the progress panel shows it: stage, fraction done, epoch, loss, val AUC, ETA."""
    state = status.get("state", "failed")
    active = state in ("starting", "running")
    if active and status.get("created_ts"):
        elapsed = (time.time() if now is None else now) - float(status["created_ts"])
    else:
        elapsed = status.get("elapsed_seconds")
    progress = status.get("progress") or {}
    stage = status.get("stage") or progress.get("stage")
    fraction = 0.0
    if state == "succeeded":
        fraction = 1.0
    elif stage in _STAGE_SPAN:
        start, end = _STAGE_SPAN[stage]
        within = 0.0
        if stage == "train" and progress.get("epochs"):
            within = min(1.0, (progress.get("epoch") or 0) / progress["epochs"])
        elif stage == "ingest" and progress.get("total"):
            within = min(1.0, (progress.get("done") or 0) / progress["total"])
        fraction = start + (end - start) * within
    train_event = stage == "train" and progress.get("epoch") is not None
    detail = ""
    if stage == "ingest" and progress.get("total"):
        detail = f"{progress.get('done') or 0} of {progress['total']} images read"
    elif stage == "train" and not train_event:
        detail = "first epoch under way"
    if active:  # one label per job: what it is doing now
        label = STAGE_LABELS.get(stage, stage) if stage else "Starting"
    else:
        label = STATE_LABELS.get(state, state).capitalize()
    return {
        "id": status.get("id"),
        "label": label,
        "state": state,
        "state_label": STATE_LABELS.get(state, state),
        "active": active,
        "stage": stage,
        "stage_label": STAGE_LABELS.get(stage, stage or "Starting"),
        "fraction": round(fraction, 3),
        "epoch": progress.get("epoch") if train_event else None,
        "epochs": progress.get("epochs") if train_event else None,
        "loss": progress.get("loss") if train_event else None,
        "val_auc": progress.get("val_auc") if train_event else None,
        # only a running job has time left; a cancelled or failed one keeps its last epoch, not its ETA
        "eta": fmt_duration(progress.get("eta_seconds")) if train_event and active else None,
        "detail": detail,
        "elapsed": fmt_duration(elapsed) if elapsed is not None else None,
        "error": status.get("error"),
        "created": status.get("created"),
        "finished": status.get("finished"),
        "data_path": status.get("data_path"),
    }


# What TensorFlow, absl and CUDA write at start-up: true, but not the pipeline's progress.
_NOISE = re.compile(
    r"^\s*$"
    r"|^[IWEF]\d{4} \d\d:\d\d:\d\d"  # absl/glog lines: I0000 00:00:1796012721.921887 ...
    r"|^WARNING: All log messages before absl::InitializeLog"
    r"|oneDNN custom operations|TF_ENABLE_ONEDNN_OPTS"
    r"|^WARNING:tensorflow:|^WARNING:absl:"
    r"|This TensorFlow binary is optimized|To enable the following instructions|rebuild TensorFlow"
    r"|Unable to register cu(DNN|FFT|BLAS)|computation placer already registered|TF-TRT Warning"
    r"|cuda_(executor|dnn|blas|fft|driver)|could not open file to read NUMA node"
)


def progress_log(text: str, lines: int = 30) -> str:
    """The pipeline's own progress lines from a job log, TensorFlow's start-up noise left out."""
    kept = [line for line in (text or "").splitlines() if not _NOISE.search(line)]
    return "\n".join(kept[-lines:])


def show_gate(active: bool) -> bool:
    """The last candidate's verdict belongs to the last finished job; while a new one runs it is stale."""
    return not active


def gate_view(status: dict) -> dict | None:
    """The quality gate's verdict on a finished job's candidate, or None when there is none (yet)."""
    result = status.get("result") or {}
    if status.get("state") != "succeeded" or not result.get("version"):
        return None
    gate = result.get("gate") or {}
    return {
        "version": result["version"],
        "compared_with": result.get("compared_with"),
        "passed": bool(gate.get("passed")),
        "reasons": list(gate.get("reasons") or []),
        "promoted": bool(result.get("promoted")),
        "metrics": result.get("metrics") or {},
        "floors": gate.get("floors") or {},
        "notes": list(gate.get("notes") or []),
        "policy": gate.get("policy"),
        "registry_stamp": gate.get("registry_stamp"),
    }


def floors_caption(floors: dict, compared_with: str | None) -> str:
    """The rules a verdict applied, in one line; a verdict taken before the gate held the framing and strip
    targets (2026-12-05) says so instead of showing limits it never checked."""
    text = (f"Floors applied: sensitivity ≥ {floors['min_sensitivity']:.2f}, specificity ≥ "
            f"{floors['min_specificity']:.2f}, AUC drop ≤ {floors['max_auc_drop']:.3f}, at least "
            f"{floors['min_test_films']} test films ({floors['min_test_per_class']} per class)")  # fmt: skip
    if "max_strip_flip_share" in floors:
        text += (f"; decisions changed by framing ≤ {floors['max_framing_flip_share']:.0%} (films refused once "
                 f"reframed ≤ {floors['max_framing_refused_share']:.0%}), by a strip and a marker ≤ "
                 f"{floors['max_strip_flip_share']:.0%} (refused ≤ {floors['max_strip_refused_share']:.0%}), "
                 f"evidence peaking on the strip ≤ {floors['max_strip_peak_share']:.0%}")  # fmt: skip
        if "max_held_out_marker_flip_share" in floors:  # checked from 2026-12-05 15:00 on
            text += (f", by a marker in words and fonts training never drew ≤ "
                     f"{floors['max_held_out_marker_flip_share']:.0%}")  # fmt: skip
    else:
        text += "; framing and strips not checked (a verdict from before the gate held them)"
    return f"{text}; compared with {compared_with or 'no model (first version)'}."


def verdict_now(gate: dict, registry, params: dict):
    """Whether the verdict of :func:`gate_view` may be acted on now, against the registry as it is."""
    from cxr_core.registry.gate import policy_stamp, promotability, server_policy

    try:
        current, stamp = registry.current_version(), registry.pointer_stamp()
    except CxrError:
        current, stamp = None, None
    return promotability(
        gate["version"], gate["passed"], gate["compared_with"], current,
        verdict_stamp=gate.get("registry_stamp"), current_stamp=stamp,
        verdict_policy=gate.get("policy"), current_policy=policy_stamp(server_policy(params["gate"])),
    )  # fmt: skip


def history_rows(jobs: list[dict]) -> list[dict]:
    rows = []
    for status in jobs:
        gate = gate_view(status)
        rows.append(
            {
                "job": status.get("id"),
                "state": STATE_LABELS.get(status.get("state"), status.get("state")),
                "started": str(status.get("created", ""))[:19].replace("T", " "),
                "finished": str(status.get("finished") or "")[:19].replace("T", " "),
                "dataset": status.get("data_path", ""),
                "candidate": gate["version"] if gate else "",
                "quality gate": ("passed" if gate["passed"] else "failed") if gate else "",
                "message": status.get("error") or "",
            }
        )
    return rows


# --------------------------------------------------------------------------------- form values

FORM_LIMITS = {  # field -> (label, lowest, highest); the page refuses a value outside, it never clamps
    "epochs": ("Epochs", 1, 500),
    "batch_size": ("Batch size", 1, 1024),
    "learning_rate": ("Learning rate", 1e-6, 1.0),
    "patience": ("Early-stopping patience", 1, 100),
    "min_sensitivity": ("Threshold: sensitivity target on validation", 0.5, 1.0),
    "val_fraction": ("Validation fraction", 0.05, 0.5),
    "test_fraction": ("Test fraction", 0.05, 0.5),
    "seed": ("Random seed", 0, 2**31 - 1),
}
WHOLE = {"epochs", "batch_size", "patience", "seed"}


def form_problems(values: dict, defaults: dict) -> list[str]:
    """Every value of the Retrain form that is out of range, in words; empty when the job may start.

    A browser number field only turns red on a value past its limit and the form used to submit a
    different one silently (a patience of 300 ran with 8): here nothing is clamped, the job does not
    start, and the message names the field and its range. The gate fields may only be stricter than the
    server's policy.
    """
    problems = []
    for field, (label, low, high) in FORM_LIMITS.items():
        value = values.get(field)
        if value is None:
            problems.append(f"{label}: enter a value between {low:g} and {high:g}.")
        elif field in WHOLE and float(value) != int(value):
            problems.append(f"{label}: {value:g} is not a whole number.")
        elif not low <= float(value) <= high:
            problems.append(f"{label}: {value:g} is outside {low:g}–{high:g}; nothing was changed, correct it.")
    gate = (
        ("gate_min_sensitivity", "Gate: minimum sensitivity", defaults["gate_min_sensitivity"], 1.0),
        ("gate_min_specificity", "Gate: minimum specificity", defaults["gate_min_specificity"], 1.0),
        ("gate_max_auc_drop", "Gate: largest allowed AUC drop", 0.0, defaults["gate_max_auc_drop"]),
    )
    for field, label, low, high in gate:
        value = values.get(field)
        if value is None or not low <= float(value) <= high:
            problems.append(
                f"{label}: {value} is outside {low:g}–{high:g} (the server's policy is the limit; the form "
                "can only make the gate stricter)."
            )
    if not problems and float(values["val_fraction"]) + float(values["test_fraction"]) >= 0.9:
        problems.append("Validation and test fractions together leave too little to train on (at most 0.9).")
    return problems


# --------------------------------------------------------------------------------- refused candidates

KEEP_REFUSED = 3  # newest failed-gate candidates kept for inspection; older ones are deleted


def refused_versions(registry) -> dict[str, list[str]]:
    """Versions whose latest gate verdict failed and that were never in use: version -> reasons.

    They are not usable versions: they are listed apart, never offered for promotion, and pruned.
    """
    from cxr_core.errors import CxrError
    from cxr_core.registry import audit

    try:
        used = {registry.current_version(), *registry.history()}
    except CxrError:
        used = set()
    verdicts: dict[str, dict] = {}
    for entry in reversed(audit.read(registry.root)):  # oldest first: the last verdict wins
        if entry.get("action") == "gate_verdict" and entry.get("version"):
            verdicts[entry["version"]] = entry
    present = {meta["version"] for meta in registry.versions()}
    return {
        version: list(entry.get("reasons") or [])
        for version, entry in verdicts.items()
        if entry.get("outcome") == "failed" and version not in used and version in present
    }


def prune_refused(registry, keep: int = KEEP_REFUSED, actor: str | None = None) -> list[str]:
    """Delete all but the newest ``keep`` refused candidates (version names sort by creation time).

    A registered version disappearing is a change to the registry like any other: each deletion leaves
    an audit line with who caused it and why the gate had refused the candidate.
    """
    import shutil

    from cxr_core.registry import audit

    refused = refused_versions(registry)
    names = sorted(refused)
    doomed = names[: max(0, len(names) - keep)]
    for version in doomed:
        shutil.rmtree(registry.version_dir(version), ignore_errors=True)
        audit.record("refused_deleted", root=registry.root, version=version, actor=actor,
                     reasons=refused[version], kept=keep)  # fmt: skip
    return doomed
