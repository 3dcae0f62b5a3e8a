"""Writing outputs so that a crash or a retry never leaves half of them behind.

Airflow retries a failed task and the dashboard's worker can be killed mid-epoch: every stage writes into
a fresh sibling folder and swaps it into place only when complete. Readers see the old complete output
or the new complete output, never a mixture.
"""

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``target``, on error it is deleted."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = None
    if target.exists():
        retired = target.parent / f".{target.name}.retired-{uuid.uuid4().hex[:8]}"
        os.rename(target, retired)
    os.rename(staging, target)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def fsync_directory(path: Path) -> None:
    """Make a rename durable: without this a power cut can undo it even after os.replace returned."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """:func:`write_bytes_atomic` for text (UTF-8)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace a file in one rename, so a concurrent reader never sees half a file.

    Written with plain ``open`` so the file gets the process umask's mode (usually 0644): a dashboard
    running as another user than the trainer (Docker) must be able to read what the trainer wrote.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(target.parent)


def write_json_atomic(path: str | Path, payload) -> None:
    """:func:`write_text_atomic` for JSON (strict: NaN is refused, it is not JSON)."""
    write_text_atomic(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def read_json_or_empty(path: str | Path) -> dict:
    """A JSON object from disk, or ``{}`` when it is missing, damaged or not an object.

    For what a page merely shows (a model's recorded figures): a missing file is reported by the
    caller as a gap, never as a crash.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def exclusive_lock(
    lock_file: str | Path, timeout: float, busy: Exception, mode: int = 0o644, poll: float = 0.05
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created with ``mode``), shared by every process.

    Waits at most ``timeout`` seconds, then raises ``busy`` (the caller's own message for a person);
    a non-blocking attempt in a loop, so a stuck holder never hangs a dashboard request for ever.
    """
    import fcntl
    import time

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, mode)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise busy from None
                time.sleep(poll)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
