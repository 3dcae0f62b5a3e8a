"""Shared helpers for the benchmarks: data selection, timing, process-tree memory, JSON output.

Every benchmark compares against a baseline measured in the same run, interleaved with the subject in
short rounds: this machine's two cores are shared, and how much of them a process gets changes from
one second to the next, so absolute times drift while ratios taken side by side hold.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cxr_core.settings import Layout  # noqa: E402  (after the project root is on the path)

DEFAULT_DATA = Path(os.environ.get("CXR_SHARED_DATA", ROOT.parent / "shared" / "data" / "cxr"))
PYTHON = sys.executable


def parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes; each adds its own sizes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of real X-rays (manifest.csv)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: proves the benchmark still runs")
    p.add_argument("--output", "-o", type=Path, default=None, help="also write the JSON here")
    return p


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def emit(result: dict, output: Path | None = None) -> None:
    """The benchmark's one JSON document on stdout (logs go to stderr)."""
    text = json.dumps(result, indent=2, default=_json_default)
    print(text, flush=True)
    if output:
        output.write_text(text + "\n")


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def machine() -> dict:
    """Date, CPU model and core count, the versions that matter."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def target(value: float | None, limit: float, op: str, text: str) -> dict:
    """One target: ``value op limit`` (op is "<=" or ">=")."""
    met = value is not None and (value <= limit if op == "<=" else value >= limit)
    return {"target": text, "value": None if value is None else round(float(value), 4), "met": bool(met)}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ----------------------------------------------------------------------------------------- data


def manifest_rows(data: Path) -> list[dict]:
    """Rows of ``manifest.csv`` (path,label,source,width,height...), or every PNG when there is none."""
    manifest = data / Layout.MANIFEST
    if manifest.exists():
        with open(manifest, newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [row for row in rows if (data / row["path"]).is_file()]
    from PIL import Image

    rows = []
    for path in sorted(data.rglob("*.png")):
        with Image.open(path) as image:
            width, height = image.size
        label = "Tuberculosis" if "tuberculosis" in str(path).lower() else "Normal"
        rows.append(
            {
                "path": str(path.relative_to(data)),
                "label": label,
                "source": "data",
                "width": width,
                "height": height,
            }
        )
    return rows


def pngs_512(data: Path) -> list[Path]:
    """The real 512x512 PNG X-rays of the data folder, in a stable order."""
    found = [
        data / row["path"]
        for row in manifest_rows(data)
        if row["path"].lower().endswith(".png")
        and str(row.get("width")) == "512"
        and str(row.get("height")) == "512"
    ]
    if not found:
        raise SystemExit(f"no 512x512 PNG X-rays in {data}")
    return sorted(found)


def labelled(data: Path, n: int | None = None) -> list[tuple[Path, int]]:
    """(path, label) of real X-rays, both labels represented, sources interleaved when ``n`` is small."""
    rows = manifest_rows(data)
    by_label: dict[int, list[Path]] = {0: [], 1: []}
    for row in sorted(rows, key=lambda r: r["path"]):
        label = 1 if str(row["label"]).strip().lower() in ("1", "tuberculosis", "tb") else 0
        by_label[label].append(data / row["path"])
    if n is None or n >= len(rows):
        return [(path, label) for label in (0, 1) for path in by_label[label]]
    share = max(2, round(n * len(by_label[1]) / max(1, len(rows))))
    picks = [(p, 1) for p in _spread(by_label[1], min(share, n - 2))]
    picks += [(p, 0) for p in _spread(by_label[0], n - len(picks))]
    return picks


def _spread(items: list, k: int) -> list:
    """``k`` items spread evenly over the list (so a small pick still covers every source)."""
    if k >= len(items):
        return list(items)
    return [items[round(i * (len(items) - 1) / max(1, k - 1))] for i in range(k)] if k > 1 else items[:k]


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix=f"cxr-bench-{prefix}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -------------------------------------------------------------------------------------- limits


def decode_resize(path) -> int:
    """The least any pipeline does with a PNG X-ray: read, decode, area-resize to the model's side."""
    import cv2
    import numpy as np

    with open(path, "rb") as handle:
        data = handle.read()
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    return int(cv2.resize(gray, (128, 128), interpolation=cv2.INTER_AREA)[0, 0])


class DecodeLimit:
    """Images/s of :func:`decode_resize` over given files on all cores: the ceiling for any pipeline.

    Threads (OpenCV releases the GIL while decoding and resizing), two per core so that a thread
    waiting on the file system never leaves a core idle; created once, outside the timing.
    """

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1))

    def rate(self, files: list[Path]) -> float:
        """Images/s; ``cpu_ms`` is then the CPU time per image (this process is otherwise idle)."""
        started, cpu = time.perf_counter(), time.process_time()
        for _ in self.pool.map(decode_resize, files):
            pass
        self.cpu_ms = 1000 * (time.process_time() - cpu) / len(files)
        return len(files) / (time.perf_counter() - started)

    def close(self) -> None:
        self.pool.shutdown()


# -------------------------------------------------------------------------------------- memory


class PeakRss(threading.Thread):
    """Samples the resident memory of a process and all its descendants; ``peak`` in bytes."""

    def __init__(self, pid: int, interval: float = 0.01):
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._stop_event.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            total = 0
            for process in processes:
                with suppress(psutil.Error):
                    total += process.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join(timeout=5)
        return self.peak


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started
