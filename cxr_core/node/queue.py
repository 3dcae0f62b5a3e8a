"""The node's durable queue: every film it acknowledged, and what became of it.

A film is written to ``films/`` (fsync, atomic rename) and its row committed (SQLite, WAL journal,
``synchronous=FULL``) before the C-STORE response goes back; a crash after that loses nothing, because
the worker picks up every ``received`` row on start. The SOP Instance UID is the primary key, so a film
sent twice (a PACS retrying, a technologist resending) is screened and delivered once.

States: ``received`` -> ``screened`` (SR and SC written beside the film) -> ``delivered``; or
``skipped`` (with the reason: lateral view, For Processing, unreadable...); a delivery that keeps failing
past the give-up time becomes ``failed`` (visible, and ``retry_failed`` puts it back).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cxr_core.fsutil import write_bytes_atomic

RECEIVED, SCREENED, DELIVERED, SKIPPED, FAILED = "received", "screened", "delivered", "skipped", "failed"
STATES = (RECEIVED, SCREENED, DELIVERED, FAILED, SKIPPED)
DATABASE = "queue.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS films (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_uid TEXT NOT NULL UNIQUE,
    sop_class TEXT,
    study_uid TEXT,
    calling_ae TEXT,
    received_at REAL NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    film_path TEXT,
    probability REAL,
    label TEXT,
    threshold REAL,
    model_version TEXT,
    site TEXT,
    evidence_in_lungs REAL,
    warnings TEXT,
    sr_path TEXT,
    sc_path TEXT,
    sr_uid TEXT,
    sc_uid TEXT,
    screened_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_error TEXT,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS films_state ON films (state, id);
"""


class FilmQueue:
    """One node's queue in ``state_dir``; safe to use from the SCP's threads and the worker's at once."""

    def __init__(self, state_dir: str | Path):
        self.root = Path(state_dir)
        self.films_dir = self.root / "films"
        self.results_dir = self.root / "results"
        self.films_dir.mkdir(parents=True, exist_ok=True)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.root / DATABASE
        self._local = threading.local()
        with self._connection() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
            self._local.db = db
        yield db

    def film_path(self, sop_uid: str) -> Path:
        """Where a film is kept: named by a hash of its UID (a UID is not a safe file name everywhere)."""
        return self.films_dir / f"{hashlib.sha256(sop_uid.encode()).hexdigest()[:32]}.dcm"

    # ------------------------------------------------------------------------------- receiving
    def known(self, sop_uid: str) -> bool:
        with self._connection() as db:
            return db.execute("SELECT 1 FROM films WHERE sop_uid = ?", (sop_uid,)).fetchone() is not None

    def receive(self, sop_uid: str, data: bytes, *, sop_class: str, study_uid: str, calling_ae: str) -> bool:
        """Keep a film for screening (durably, before returning); False when this UID was already taken."""
        if self.known(sop_uid):
            return False
        path = self.film_path(sop_uid)
        write_bytes_atomic(path, data)
        with self._connection() as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO films (sop_uid, sop_class, study_uid, calling_ae, received_at, state, "
                "film_path) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sop_uid, sop_class, study_uid, calling_ae, time.time(), RECEIVED, path.name),
            ).rowcount
        return bool(inserted)

    def skip_on_arrival(
        self, sop_uid: str, reason: str, *, sop_class: str, study_uid: str, calling_ae: str
    ) -> bool:
        """Record a film that is not to be screened (no copy kept); False when this UID was already taken."""
        with self._connection() as db:
            return bool(
                db.execute(
                    "INSERT OR IGNORE INTO films (sop_uid, sop_class, study_uid, calling_ae, received_at, state, "
                    "reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (sop_uid, sop_class, study_uid, calling_ae, time.time(), SKIPPED, reason),
                ).rowcount
            )

    # ------------------------------------------------------------------------------- the worker
    def waiting(self, limit: int) -> list[sqlite3.Row]:
        """Films received and not screened yet, oldest first (after a crash: those it had not finished)."""
        with self._connection() as db:
            return db.execute(
                "SELECT * FROM films WHERE state = ? ORDER BY id LIMIT ?", (RECEIVED, limit)
            ).fetchall()

    def skip(self, film_id: int, reason: str) -> None:
        with self._connection() as db:
            db.execute(
                "UPDATE films SET state = ?, reason = ? WHERE id = ? AND state = ?",
                (SKIPPED, reason, film_id, RECEIVED),
            )

    def screened(self, film_id: int, result: dict, sr: bytes, sc: bytes) -> None:
        """The result and its two DICOM objects, written before the row says so.

        Not fsynced: unlike a received film, a result can be made again from the film. A result file
        lost or cut by a power failure is found when it is sent (:meth:`rescreen`), and the film is
        screened again, with the same UIDs.
        """
        sr_path = self.results_dir / f"{film_id}.sr.dcm"
        sc_path = self.results_dir / f"{film_id}.sc.dcm"
        sr_path.write_bytes(sr)
        sc_path.write_bytes(sc)
        with self._connection() as db:
            db.execute(
                "UPDATE films SET state = ?, probability = ?, label = ?, threshold = ?, model_version = ?, "
                "site = ?, evidence_in_lungs = ?, warnings = ?, sr_uid = ?, sc_uid = ?, sr_path = ?, "
                "sc_path = ?, screened_at = ?, next_attempt_at = ? WHERE id = ? AND state = ?",
                (
                    SCREENED, result["probability"], result["label"], result["threshold"],
                    result["model_version"], result["site"], result["evidence_in_lungs"], result["warnings"],
                    result["sr_uid"], result["sc_uid"], sr_path.name, sc_path.name, time.time(), 0.0,
                    film_id, RECEIVED,
                ),
            )  # fmt: skip

    def due(self, limit: int, now: float | None = None) -> list[sqlite3.Row]:
        """Screened films whose (next) delivery attempt is due."""
        with self._connection() as db:
            return db.execute(
                "SELECT * FROM films WHERE state = ? AND COALESCE(next_attempt_at, 0) <= ? ORDER BY id LIMIT ?",
                (SCREENED, time.time() if now is None else now, limit),
            ).fetchall()

    def rescreen(self, film_id: int) -> None:
        """Back to the screener: its result files were lost or damaged before they were sent."""
        with self._connection() as db:
            db.execute("UPDATE films SET state = ? WHERE id = ? AND state = ?", (RECEIVED, film_id, SCREENED))

    def delivered(self, film_id: int) -> None:
        with self._connection() as db:
            db.execute(
                "UPDATE films SET state = ?, delivered_at = ?, last_error = NULL WHERE id = ? AND state = ?",
                (DELIVERED, time.time(), film_id, SCREENED),
            )

    def delivery_failed(
        self, film_id: int, error: str, *, first: float, longest: float, give_up_after: float
    ) -> str:
        """One more failed attempt: back off (doubling from ``first`` up to ``longest``) or give up."""
        with self._connection() as db:
            row = db.execute("SELECT attempts, screened_at FROM films WHERE id = ?", (film_id,)).fetchone()
            attempts = int(row["attempts"]) + 1
            now = time.time()
            state = FAILED if now - float(row["screened_at"] or now) >= give_up_after else SCREENED
            wait = min(longest, first * 2 ** (attempts - 1))
            db.execute(
                "UPDATE films SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
                (state, attempts, now + wait, error[:500], film_id),
            )
            return state

    def retry_failed(self) -> int:
        """Put every failed delivery back in line (the PACS is back); returns how many."""
        with self._connection() as db:
            return db.execute(
                "UPDATE films SET state = ?, screened_at = ?, next_attempt_at = 0 WHERE state = ?",
                (SCREENED, time.time(), FAILED),
            ).rowcount

    # ------------------------------------------------------------------------------- reading
    def counts(self) -> dict[str, int]:
        with self._connection() as db:
            found = dict(db.execute("SELECT state, COUNT(*) FROM films GROUP BY state").fetchall())
        return {state: int(found.get(state, 0)) for state in STATES}

    def skip_reasons(self) -> dict[str, int]:
        """The refusal counters: how many films were not screened, per reason."""
        with self._connection() as db:
            rows = db.execute(
                "SELECT reason, COUNT(*) FROM films WHERE state = ? GROUP BY reason ORDER BY 2 DESC",
                (SKIPPED,),
            ).fetchall()
        return {str(reason): int(count) for reason, count in rows}

    def rows(self, limit: int = 500) -> list[dict]:
        """The newest films first, as plain dicts (the dashboard's worklist)."""
        with self._connection() as db:
            found = db.execute("SELECT * FROM films ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(row) for row in found]

    def read_film(self, row) -> bytes:
        return (self.films_dir / row["film_path"]).read_bytes()

    def read_result(self, name: str) -> bytes:
        return (self.results_dir / name).read_bytes()
