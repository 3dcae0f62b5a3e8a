"""The audit trail: one JSON line per action that changes (or tries to change) what the product decides.

Who retrained, who promoted, who rolled back, who recorded an outcome, who failed to log in, what the
gate said, and when: a clinic must be able to answer that after the fact. Lines are only ever appended
(``O_APPEND``, one ``write`` per line, fsync) under an exclusive ``flock`` of the file, so writers from
the dashboard, the CLI and an Airflow worker neither interleave nor fork the chain.

Each line carries ``prev``, the sha256 of the line before it (the first line: 64 zeros), so an edit,
a deletion or a re-ordering anywhere breaks the chain at that point and :func:`verify` names the line.
A chain made without a key only shows edits by someone who did not recompute every later line; it is
a tripwire, not a signature (a deployment that needs more ships the lines to a write-once store).
A line cut short by a crash is skipped when reading, and the next line records that it follows one,
so a crash is told apart from an edit.

The log lives beside the models it describes (``<registry>/audit.jsonl``, group-writable, not readable
by others), so it travels with the Docker volume that holds them.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cxr_core.settings import models_dir

AUDIT_FILE = "audit.jsonl"
GENESIS = "0" * 64
FILE_MODE = 0o660
ACTIONS = (
    "retrain_start", "retrain_cancel", "gate_verdict", "promote", "rollback", "register",
    "site_profile", "site_activate", "outcome_recorded", "login", "login_failed", "user_added",
    "refused_deleted", "serving_twin",
)  # fmt: skip


def audit_path(root: str | Path | None = None) -> Path:
    return Path(root or models_dir()) / AUDIT_FILE


def default_actor() -> str:
    """Who acts when the caller does not say: the process's driver (``CXR_ACTOR``) and OS user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = str(os.getuid())
    return f"{os.environ.get('CXR_ACTOR', 'cli')}:{user}"


def line_hash(raw: bytes) -> str:
    """The link the next line carries: sha256 of one line's bytes, without its newline."""
    return hashlib.sha256(raw.rstrip(b"\n")).hexdigest()


def _last_line(fd: int, size: int) -> bytes:
    """The file's last line (complete or torn), read backwards so a long log is not read whole."""
    end = size
    if end and os.pread(fd, 1, end - 1) == b"\n":
        end -= 1
    chunk, start = 4096, end
    while start > 0:
        start = max(0, start - chunk)
        block = os.pread(fd, end - start, start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            return block[cut + 1 :]
        chunk *= 2
    return os.pread(fd, end, 0)


def record(
    action: str,
    *,
    root: str | Path | None = None,
    version: str | None = None,
    previous: str | None = None,
    actor: str | None = None,
    outcome: str = "ok",
    **details,
) -> dict:
    """Append one chained line; returns what was written."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    entry = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "action": action,
        "version": version,
        "previous": previous,
        "actor": actor or default_actor(),
        "outcome": outcome,
        **details,
    }
    path = audit_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # read the last link and append as one step
        size = os.fstat(fd).st_size
        prefix = b""
        if size:
            last = _last_line(fd, size)
            entry["prev"] = line_hash(last)
            if os.pread(fd, 1, size - 1) != b"\n":  # a crash left a torn line: start a fresh one
                prefix = b"\n"
                entry["after_torn_line"] = True
        else:
            entry["prev"] = GENESIS
        line = (json.dumps(entry, default=str, ensure_ascii=False) + "\n").encode("utf-8")
        os.write(fd, prefix + line)
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock
    return entry


def read(root: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """Entries, newest first; lines that do not parse (a torn last line after a crash) are skipped."""
    path = audit_path(root)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    entries = []
    for line in raw.splitlines():
        entry = _parse(line)
        if entry is not None:
            entries.append(entry)
    entries.reverse()
    return entries[:limit] if limit else entries


def _parse(line: bytes) -> dict | None:
    try:
        entry = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return entry if isinstance(entry, dict) and "action" in entry else None


@dataclass
class ChainReport:
    """Whether every line of the trail links to the one before it, and where it first does not."""

    ok: bool
    lines: int
    broken_at: int | None = None  # 1-based line number of the first broken link
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    def message(self) -> str:
        if self.ok:
            extra = f" ({'; '.join(self.notes)})" if self.notes else ""
            return f"The audit chain holds: {self.lines} lines, each linked to the one before it{extra}."
        return f"The audit chain is broken at line {self.broken_at}: {self.reason}."


def verify(root: str | Path | None = None) -> ChainReport:
    """Walk the trail from the first line and report the first line whose link does not match."""
    path = audit_path(root)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ChainReport(True, 0, notes=["no audit file yet"])
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    expected = GENESIS
    torn = 0
    for number, line in enumerate(lines, 1):
        entry = _parse(line)
        if entry is None:
            following = _parse(lines[number]) if number < len(lines) else None
            last = number == len(lines)
            if last or (following and following.get("after_torn_line") and following.get("prev") == line_hash(line)):
                torn += 1  # a write cut short by a crash, acknowledged by the line after it
                expected = line_hash(line)
                continue
            return ChainReport(False, len(lines), number, "the line is not a complete audit entry")
        if entry.get("prev") != expected:
            if "prev" not in entry:
                reason = "the line carries no link to the line before it"
            elif number == 1:
                reason = "the first line does not start the chain (lines before it were removed)"
            else:
                reason = f"its link does not match line {number - 1} (that line or this one was changed or removed)"
            return ChainReport(False, len(lines), number, reason)
        expected = line_hash(line)
    notes = [f"{torn} line(s) cut short by a crash"] if torn else []
    return ChainReport(True, len(lines), notes=notes)
