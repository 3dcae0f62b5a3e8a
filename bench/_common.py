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


# ------------------------------------------------------------------------------ where the time goes


def stage_costs(files: list[Path], model: str | None = None, batch: int = 32) -> dict:
    """CPU milliseconds per image of each step of the shipped path, and of the limit's own work.

    Each step runs on its own, one after another in this process (the network steps in batches of
    ``batch``, as the CLI and ingest run them), timed with the process's CPU clock, so the figures do
    not depend on how many cores the machine grants at the moment. They say where a throughput ratio
    goes: the limit's decode-and-resize against everything the shipped path does per film.
    """
    import hashlib

    import imagehash
    import numpy as np
    from PIL import Image

    from cxr_core.imaging.decode import check_plausible_radiograph, read_image
    from cxr_core.imaging.preprocess import model_input_from_image
    from cxr_core.modelling.predictor import Predictor, ScreenedImage, result_row
    from cxr_core.registry.store import Registry

    model_dir, _ = Registry().resolve_with_warning(model)
    predictor = Predictor(model_dir)
    lungs = predictor.lungs
    spent: dict[str, float] = {}
    per_call = "batched as the CLI and ingest run it" if batch > 1 else "one film per call"

    def timed_step(name: str, fn, *args):
        cpu = time.process_time()
        result = fn(*args)
        spent[name] = spent.get(name, 0.0) + time.process_time() - cpu
        return result

    def read(path):
        with open(path, "rb") as handle:
            return handle.read()

    # The classifier's bare forward pass, for the second limit: what the networks alone cost per film, in
    # the runtime that serves (TFLite where the version has its twin). Keras' forward pass here made the
    # limit 2.8 ms a film dearer than the served classifier *with* its Grad-CAM, and flattered the ratio.
    bare_forward = predictor.scorer.forward
    predictor.screen([(files[0].name, files[0])])  # trace the compiled functions outside the clock
    bare_forward(np.zeros([2, predictor.side, predictor.side, 1], np.uint8))
    if lungs is not None:
        lungs.probabilities([lungs.lung_input(read_image(files[0]).pixels)[0]] * 2)
    for start in range(0, len(files), batch):
        group = files[start : start + batch]
        for path in group:
            timed_step("limit: read + decode + resize", decode_resize, path)
        images, staged = [], []
        for path in group:
            data = timed_step("read file", read, path)
            timed_step("md5 (ingest)", lambda d: hashlib.md5(d).hexdigest(), data)
            image = timed_step("decode + integrity checks", read_image, data)
            timed_step("plausibility check", check_plausible_radiograph, image)
            images.append(image)
            if lungs is not None:
                staged.append(
                    timed_step("lung input (trim, letterbox, equalise)", lungs.lung_input, image.pixels)
                )
        found = [None] * len(images)
        if lungs is not None:
            probabilities = timed_step(
                f"lung network ({per_call})", lungs.probabilities, [s[0] for s in staged]
            )
            found = [
                timed_step(
                    "lung post-processing (mask, plausibility, box)", lungs.segment_from, p, s[1], i.pixels
                )
                for p, s, i in zip(probabilities, staged, images, strict=True)
            ]
        prepared = [
            timed_step(
                "crop + resize + equalise",
                lambda i, f: model_input_from_image(
                    i, predictor.side, lungs=lungs, crop_to_lungs=predictor.crop_to_lungs,
                    lung_margin=predictor.lung_margin, mask_to_lungs=predictor.mask_to_lungs, found=f,
                ),
                image,
                f,
            )
            for image, f in zip(images, found, strict=True)
        ]  # fmt: skip
        for item in prepared:
            timed_step(
                "perceptual hash (ingest)", lambda p: str(imagehash.phash(Image.fromarray(p))), item.pixels
            )
        batch_pixels = np.stack([item.pixels for item in prepared])[..., None]
        predictions = timed_step(f"classifier + Grad-CAM + OOD ({per_call})", predictor.predict, batch_pixels)
        timed_step(
            f"limit: classifier forward alone ({per_call})",
            bare_forward,
            batch_pixels,
        )
        for item, prediction in zip(prepared, predictions, strict=True):
            row = ScreenedImage(
                name="x", ok=True, image=item.image, box=item.box, prediction=prediction, lungs=item.lungs
            )
            timed_step("result row (lung-evidence share)", result_row, row, predictor)
    per_image = {name: round(1000 * seconds / len(files), 3) for name, seconds in spent.items()}
    # The second limits: decode + resize + the bare inference of the networks a path runs (ingest runs
    # the lung network only; the CLI both).
    with_lungs = per_image["limit: read + decode + resize"] + next(
        (v for k, v in per_image.items() if k.startswith("lung network")), 0.0
    )
    per_image["limit 2: decode + resize + the lung network's bare inference"] = round(with_lungs, 3)
    per_image["limit 2: decode + resize + both networks' bare inference"] = round(
        with_lungs + per_image[f"limit: classifier forward alone ({per_call})"], 3
    )
    return {
        "images": len(files),
        "model": predictor.version,
        "lung_model": None if lungs is None else lungs.version,
        "cpu_ms_per_image": per_image,
    }
