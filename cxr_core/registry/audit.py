"""The audit trail: one JSON line per action that changes (or tries to change) the model patients get.

Who retrained, who promoted, who rolled back, what the gate said, and when: a clinic must be able to
answer that after the fact. Lines are only ever appended (``O_APPEND``, one ``write`` per line, fsync),
so concurrent writers from the dashboard, the CLI and an Airflow worker do not interleave within a
line, and nothing rewrites history. A line cut short by a crash is skipped when reading, never fatal.

The log lives beside the models it describes (``<registry>/audit.jsonl``), so it travels with the
Docker volume that holds them.
"""

from __future__ import annotations

import getpass
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from cxr_core.settings import models_dir

AUDIT_FILE = "audit.jsonl"
ACTIONS = (
    "retrain_start", "retrain_cancel", "gate_verdict", "promote", "rollback", "register",
    "site_profile", "site_activate", "outcome_recorded",
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
    """Append one line; returns what was written."""
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
    line = (json.dumps(entry, default=str, ensure_ascii=False) + "\n").encode("utf-8")
    path = audit_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a crash left a torn line: start a fresh one
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
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
        try:
            entry = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(entry, dict) and "action" in entry:
            entries.append(entry)
    entries.reverse()
    return entries[:limit] if limit else entries
