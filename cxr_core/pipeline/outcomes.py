"""Confirmed outcomes: what a screened film turned out to be, kept as a local labelled set.

A clinic that records, film by film, whether TB was confirmed builds the data it needs to validate the
model on its own population and to set its own operating point (:mod:`cxr_core.registry.sites`), and
later to retrain with source ``local``. Nothing that identifies a patient is kept: the film is stored as
its decoded pixels in a plain PNG (no DICOM header, no EXIF), named by the hash of those pixels, and the
manifest holds only that name, the label and the source.

Layout (a dataset any driver reads, inside the uploads root)::

    <uploads>/local/manifest.csv          path,label,source,recorded
    <uploads>/local/films/<sha256>.png
    <uploads>/local/.lock                 flock: one writer at a time

The labels decide site thresholds and training data, so recording one is an administrator's act
(the Screen page asks for the login; here ``actor`` is required and goes to the audit trail). Two
saves at once are serialised by an exclusive lock on the folder, so neither loses the other's row,
and the set is capped (``CXR_OUTCOMES_QUOTA`` films, default 5,000) so a runaway script or a
compromised session cannot flood it: corrections and withdrawals still work at the cap.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cxr_core.errors import CxrError
from cxr_core.fsutil import exclusive_lock, write_bytes_atomic, write_text_atomic
from cxr_core.registry import audit

OUTCOMES = {"tb": "Tuberculosis", "not_tb": "Normal"}
FIELDS = ["path", "label", "source", "recorded"]
DEFAULT_QUOTA = 5000
LOCK_TIMEOUT_S = 30.0


def quota() -> int:
    """How many films the local set may hold (``CXR_OUTCOMES_QUOTA``)."""
    try:
        return max(1, int(os.environ.get("CXR_OUTCOMES_QUOTA") or DEFAULT_QUOTA))
    except ValueError:
        return DEFAULT_QUOTA


def _locked(folder: Path):
    """Exclusive lock on the local set, shared by every dashboard process and the CLI on this machine."""
    busy = CxrError("Another outcome is being saved; try again in a moment.")
    return exclusive_lock(folder / ".lock", LOCK_TIMEOUT_S, busy, mode=0o660, poll=0.02)


def local_set_dir() -> Path:
    from cxr_core.settings import uploads_dir

    return uploads_dir() / "local"


def film_key(pixels: np.ndarray) -> str:
    """The film's identity: a hash of its pixels (the same film re-sent is the same entry)."""
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes() + str(pixels.shape).encode()).hexdigest()


def _read_manifest(folder: Path) -> dict[str, dict]:
    path = folder / "manifest.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


def record_outcome(pixels: np.ndarray, outcome: str, *, actor: str, folder: Path | None = None) -> dict:
    """Record (or correct, or with ``unknown`` withdraw) the confirmed outcome of one film, as ``actor``."""
    if outcome not in (*OUTCOMES, "unknown"):
        raise CxrError(f"unknown outcome {outcome!r}: choose tb, not_tb or unknown")
    if not actor or not str(actor).strip():
        raise CxrError("a confirmed outcome is recorded only by a named administrator")
    folder = folder or local_set_dir()
    with _locked(folder):
        return _record_locked(pixels, outcome, actor, folder)


def _record_locked(pixels: np.ndarray, outcome: str, actor: str, folder: Path) -> dict:
    from PIL import Image

    key = film_key(pixels)
    name = f"films/{key}.png"
    rows = _read_manifest(folder)
    if outcome != "unknown" and name not in rows and len(rows) >= quota():
        audit.record("outcome_recorded", actor=actor, film=key[:16], outcome=f"refused: quota {quota()} reached")
        raise CxrError(
            f"The local set is full ({len(rows)} films, the quota is {quota()}). Ask the operator to raise "
            "CXR_OUTCOMES_QUOTA or to archive the set before recording more."
        )
    if outcome == "unknown":
        rows.pop(name, None)
    else:
        target = folder / name
        if not target.exists():
            buffer = io.BytesIO()
            Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")  # no metadata
            write_bytes_atomic(target, buffer.getvalue())
        rows[name] = {
            "path": name,
            "label": OUTCOMES[outcome],
            "source": "local",
            "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(sorted(rows.values(), key=lambda row: row["path"]))
    write_text_atomic(folder / "manifest.csv", text.getvalue())
    audit.record("outcome_recorded", actor=actor, film=key[:16], outcome="ok", label=outcome)
    return {"film": key, "outcome": outcome, "films_in_set": len(rows), "folder": str(folder)}


def local_set_counts(folder: Path | None = None) -> dict[str, int]:
    rows = _read_manifest(folder or local_set_dir())
    counts = {label: 0 for label in OUTCOMES.values()}
    for row in rows.values():
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    return counts


def recorded_outcome(pixels: np.ndarray, folder: Path | None = None) -> str | None:
    row = _read_manifest(folder or local_set_dir()).get(f"films/{film_key(pixels)}.png")
    return None if row is None else next(k for k, v in OUTCOMES.items() if v == row["label"])
