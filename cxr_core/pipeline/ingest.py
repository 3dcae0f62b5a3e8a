"""Stage 1, ingest: decode, check and preprocess a dataset into compact uint8 shards plus a manifest.

The original system held every image as a float32 list and pickled about 400 MB. Here a pool of
threads decodes fixed-size chunks, the caller writes each chunk as one ``.npy`` shard as soon as it
arrives and keeps only the small per-image rows, and at most ``2 x workers`` chunks are in flight; peak
memory is set by the chunk size, not the dataset size (4200 Kaggle images make about 70 MB of shards).
Threads, not processes: the decoders, MD5, resizing and hashing release the GIL, so two threads keep two
cores busy, while worker processes would each import the decoders again (about 0.3 s of a run that
takes two seconds for a thousand X-rays) and copy every chunk back to the parent.

Duplicates matter for an honest test score: the same radiograph (or a re-encoded, resized copy) on
both sides of a split inflates every metric. Exact copies share an MD5 of their bytes; near copies
share a perceptual hash of the preprocessed image within a small Hamming distance *and* correlate
almost perfectly pixel by pixel: chest X-rays all look alike at the hash's low resolution, so the hash
alone would pair different patients (on the development set it paired a Normal with a TB image, at
correlation 0.84, while a re-encoded, resized, slightly cropped copy correlates at 0.98). Each group of
duplicates is one unit of the split, which is stratified by (label, source) and seeded.
"""

import csv
import hashlib
import json
import os
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from cxr_core import settings
from cxr_core.errors import CxrError, DatasetError
from cxr_core.fsutil import atomic_directory, write_json_atomic
from cxr_core.pipeline.datasets import Record, dataset_fingerprint, discover, read_record_bytes
from cxr_core.settings import Layout

MANIFEST_FIELDS = [
    "index", "path", "member", "label", "source", "md5", "phash", "group", "split",
    "shard", "offset", "width", "height", "format",
    "box_top", "box_left", "box_bottom", "box_right", "lesions", "lesion_test",
]  # fmt: skip
# Beside each image shard: the lung fields in the network's frame (channel 0 as segmented, channel 1 grown
# so hila and pleura count), and the low-level features of the whole film that the shortcut audit uses.
MASKS_DIR, THUMBS_DIR = "masks", "thumbs"  # beside the shards folder, one file per shard of the same name
THUMB_SIDE = 16
# A fixed share of the films with radiologists' lesion boxes is never trained on, whatever the seed: the
# lesion test set on which "is the evidence on the disease" is measured.
LESION_TEST_FRACTION = 0.2
LESIONS_FILE = "lesions.csv"
SPLITS = ("train", "val", "test")
ProgressSink = Callable[[dict], None] | None  # called with {"stage": "ingest", "done": n, "total": m}
# Films per lung-network call: all of the batching gain, and few full-size pictures held at once.
LUNG_BATCH = 16


def run_ingest(
    data_path: str | Path,
    out_dir: str | Path,
    params: dict | None = None,
    *,
    progress: ProgressSink = None,
) -> dict:
    """Ingest ``data_path`` (any layout :func:`cxr_core.pipeline.datasets.discover` knows) into ``out_dir``."""
    params = settings.section("ingest", params)
    started = time.perf_counter()
    found = discover(data_path)
    if not found.records:
        raise DatasetError(f"no images found in {data_path}")
    workers = int(params["workers"]) or os.cpu_count() or 1
    side = int(params["side"])
    chunks = [
        found.records[i : i + params["chunk_size"]]
        for i in range(0, len(found.records), params["chunk_size"])
    ]
    rows: list[dict] = []
    skipped = [{"path": path, "reason": reason} for path, reason in found.skipped]
    prepare, preprocessing = model_input_maker(params)
    lesions = read_lesion_boxes(data_path)

    with atomic_directory(out_dir) as staging:
        for folder in (Layout.SHARDS, MASKS_DIR, THUMBS_DIR):
            (staging / folder).mkdir()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending = {}
            next_chunk = 0
            done_images = 0
            while next_chunk < len(chunks) or pending:
                while next_chunk < len(chunks) and len(pending) < 2 * workers:
                    future = pool.submit(_process_chunk, chunks[next_chunk], side, prepare, lesions)
                    pending[future] = next_chunk
                    next_chunk += 1
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    shard_index = pending.pop(future)
                    images, good_rows, bad_rows, extras = future.result()
                    shard_name = f"shard-{shard_index:05d}.npy"
                    if len(images):
                        np.save(staging / Layout.SHARDS / shard_name, images)
                        np.save(staging / MASKS_DIR / shard_name, extras["masks"])
                        np.save(staging / THUMBS_DIR / shard_name, extras["thumbs"])
                    for offset, row in enumerate(good_rows):
                        rows.append({**row, "shard": shard_name, "offset": offset})
                    skipped.extend(bad_rows)
                    done_images += len(chunks[shard_index])
                    if progress:
                        progress({"stage": "ingest", "done": done_images, "total": len(found.records)})

        if not rows:
            raise DatasetError(f"none of the {len(found.records)} files in {data_path} could be read")
        rows.sort(key=lambda r: (r["path"], r["member"] or ""))
        for index, row in enumerate(rows):
            row["index"] = index
        shards = _ShardReader(staging / Layout.SHARDS)
        groups, duplicate_counts = group_duplicates(
            rows,
            int(params["near_duplicate_bits"]),
            float(params["near_duplicate_correlation"]),
            shards.image,
        )
        assign_splits(rows, groups, params)
        lesion_test = hold_out_lesion_films(rows)
        _check_trainable(rows)

        with open(staging / Layout.MANIFEST, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            for row in rows:
                writer.writerow({key: row.get(key) for key in MANIFEST_FIELDS})
        with open(staging / Layout.SKIPPED, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["path", "reason"])
            writer.writeheader()
            writer.writerows(skipped)
        summary = {
            "data_path": str(data_path),
            "data_name": Path(data_path).name,
            "layout": found.layout,
            "preprocessing": preprocessing,
            "data_fingerprint": dataset_fingerprint(found.records),
            "side": side,
            "images": len(rows),
            "skipped": len(skipped),
            "duplicates": duplicate_counts,
            "lesion_films": sum(1 for row in rows if row.get("lesions")),
            "lesion_test_films": lesion_test,
            "counts": _counts(rows),
            "seconds": round(time.perf_counter() - started, 2),
            "workers": workers,
            "lung_cache": _cache_counts(prepare),
        }
        write_json_atomic(staging / Layout.SUMMARY, summary)
    return summary


def model_input_maker(params: dict):
    """This run's decode and finish steps of ``to_model_input`` (lung settings bound), and what to record.

    Two steps so that a chunk's films share one call of the lung network; see
    :func:`cxr_core.imaging.preprocess.finish_model_inputs`.
    """
    from functools import partial

    from cxr_core.imaging.preprocess import decode_for_model, finish_model_inputs

    lungs = None
    if params["lung_check"] or params["lung_crop"]:
        from cxr_core.modelling.lungs import load_lung_model

        lungs = load_lung_model()
        if lungs is None:
            raise DatasetError(
                "no lung model is registered, but the settings ask for the lung check or crop: train one "
                "(python -m cxr_core lungs-train --register --promote) or set ingest.lung_check false"
            )
    preprocessing = {
        "lung_check": bool(lungs),
        "lung_crop": bool(params["lung_crop"]),
        "lung_margin": float(params["lung_margin"]),
        "lung_mask": bool(params["lung_crop"] and params["lung_mask"]),
        "lung_model": {"version": lungs.version, "sha256": lungs.sha256} if lungs else None,
    }
    if lungs is not None and params.get("lung_cache"):
        lungs = CachedLungs(lungs, settings.lung_cache_dir())
    decode = partial(decode_for_model, lungs=lungs)
    finish = partial(
        finish_model_inputs, side=int(params["side"]), lungs=lungs, crop_to_lungs=bool(params["lung_crop"]),
        lung_margin=float(params["lung_margin"]), mask_to_lungs=preprocessing["lung_mask"],
    )  # fmt: skip
    return (decode, finish), preprocessing


class CachedLungs:
    """A lung model whose network outputs are kept on disk, keyed by the content of the network's input.

    The key is the input the network sees (the letterboxed small picture), so any file that decodes to
    the same picture hits, whatever its name; the folder is named by the lung model's sha256, so a new
    lung model never reads another's outputs. Everything but :meth:`probabilities` is the model's own.
    Writes are atomic (temporary file, then rename): ingest threads may race on the same film safely.
    """

    def __init__(self, lungs, root: Path):
        self._lungs = lungs
        self.folder = Path(root) / str(lungs.sha256 or lungs.version)[:16]
        self.hits = self.misses = 0

    def __getattr__(self, name):
        return getattr(self._lungs, name)

    def probabilities(self, smalls: list[np.ndarray]) -> list[np.ndarray]:
        keys = [hashlib.sha1(np.ascontiguousarray(small).tobytes()).hexdigest() for small in smalls]
        found: list[np.ndarray | None] = []
        for key in keys:
            try:
                found.append(np.load(self.folder / f"{key}.npy"))
            except (OSError, ValueError):
                found.append(None)
        missing = [i for i, prob in enumerate(found) if prob is None]
        self.hits += len(smalls) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = self._lungs.probabilities([smalls[i] for i in missing])
            self.folder.mkdir(parents=True, exist_ok=True)
            for i, prob in zip(missing, computed, strict=True):
                found[i] = prob
                temporary = self.folder / f".{keys[i]}.{os.getpid()}.{id(prob)}.npy"
                np.save(temporary, prob)
                os.replace(temporary, self.folder / f"{keys[i]}.npy")
        return found


def _process_chunk(
    records: list[Record], side: int, prepare=None, lesions: dict | None = None
) -> tuple[np.ndarray, list[dict], list[dict], dict]:
    """Worker: read, check and preprocess one chunk; a bad file becomes a skipped row, never an exception.

    Each file is read and decoded once; its MD5 is of the bytes already read. ``prepare`` is the
    (decode, finish) pair of :func:`model_input_maker` (default: no lung model).
    """
    import imagehash
    from PIL import Image

    from cxr_core.imaging.preprocess import decode_for_model, finish_model_inputs

    decode, finish = prepare or (decode_for_model, lambda films: finish_model_inputs(films, side))
    images, good, bad, masks, thumbs = [], [], [], [], []
    for start in range(0, len(records), LUNG_BATCH):
        decoded = []  # (record, name, md5, film): full-size pictures held only for one lung batch
        for record in records[start : start + LUNG_BATCH]:
            name = record.path if record.member is None else f"{record.path}::{record.member}"
            try:
                data = read_record_bytes(record)
                decoded.append((record, name, hashlib.md5(data).hexdigest(), decode(data)))
            except CxrError as error:
                bad.append({"path": name, "reason": str(error)})
            except OSError as error:
                bad.append({"path": name, "reason": f"cannot read file: {error.strerror or error}"})
        for (record, name, digest, _), prepared in zip(decoded, finish([d[3] for d in decoded]), strict=True):
            if isinstance(prepared, CxrError):
                bad.append({"path": name, "reason": str(prepared)})
                continue
            images.append(prepared.pixels)
            masks.append(lung_masks_in_view(prepared, side))
            thumbs.append(film_thumbnail(prepared.image.pixels))
            box = prepared.box
            boxes = boxes_in_view((lesions or {}).get(os.path.normpath(record.path), []), box, side)
            good.append(
                {
                    "box_top": box.top, "box_left": box.left, "box_bottom": box.bottom, "box_right": box.right,
                    "lesions": json.dumps(boxes) if boxes else "",
                    "lesion_test": 0,
                    "path": record.path,
                    "member": record.member or "",
                    "label": int(record.label),
                    "source": record.source,
                    "md5": digest,
                    "phash": str(imagehash.phash(Image.fromarray(prepared.pixels))),
                    "width": prepared.image.width,
                    "height": prepared.image.height,
                    "format": prepared.image.format,
                }
            )
    stacked = np.stack(images) if images else np.empty((0, side, side), np.uint8)
    extras = {
        "masks": np.stack(masks) if masks else np.empty((0, side, side, 2), np.uint8),
        "thumbs": np.stack(thumbs) if thumbs else np.empty((0, THUMB_SIDE * THUMB_SIDE + 5), np.float32),
    }
    return stacked, good, bad, extras


def _cache_counts(prepare) -> dict | None:
    """How many films the lung network was spared (cache hits) and ran on (misses) in this ingest."""
    decode = prepare[0]
    lungs = getattr(decode, "keywords", {}).get("lungs")
    if not isinstance(lungs, CachedLungs):
        return None
    return {"hits": lungs.hits, "misses": lungs.misses}


def read_lesion_boxes(data_path: str | Path) -> dict[str, list[tuple[int, int, int, int]]]:
    """Radiologists' lesion boxes (``lesions.csv`` beside a manifest: path,kind,xmin,ymin,xmax,ymax in the
    stored film's pixels), keyed by the film's normalised path; empty when the dataset has none."""
    found = Path(data_path) / LESIONS_FILE
    if not found.is_file():
        return {}
    boxes: dict[str, list] = defaultdict(list)
    with open(found, newline="") as handle:
        for row in csv.DictReader(handle):
            key = os.path.normpath(os.path.join(os.path.abspath(data_path), row["path"]))
            boxes[key].append(tuple(int(float(row[k])) for k in ("xmin", "ymin", "xmax", "ymax")))
    return dict(boxes)


def boxes_in_view(boxes, box, side: int) -> list[list[float]]:
    """Film-pixel boxes (x0, y0, x1, y1) in the network's ``side``-pixel frame, clipped; empty ones dropped."""
    scale_y = side / max(1, box.bottom - box.top)
    scale_x = side / max(1, box.right - box.left)
    placed = []
    for x0, y0, x1, y1 in boxes:
        a = (min(max((x0 - box.left) * scale_x, 0.0), side), min(max((y0 - box.top) * scale_y, 0.0), side))
        b = (min(max((x1 - box.left) * scale_x, 0.0), side), min(max((y1 - box.top) * scale_y, 0.0), side))
        if b[0] - a[0] >= 1 and b[1] - a[1] >= 1:
            placed.append([round(a[0], 1), round(a[1], 1), round(b[0], 1), round(b[1], 1)])
    return placed


def lung_masks_in_view(prepared, side: int) -> np.ndarray:
    """(side, side, 2) uint8 0/255: the lung fields inside the network's view, as found and grown.

    Grown by :data:`cxr_core.modelling.evidence.LUNG_GROWTH` of the film's longer side, the tolerance
    the evidence targets and measures use, so the hila, pleura and apices count as lung.
    """
    from cxr_core.modelling.evidence import lungs_in_view

    out = np.zeros((side, side, 2), np.uint8)
    if not prepared.lungs or prepared.lungs.get("mask") is None:
        return out
    box = prepared.box
    region = prepared.lungs["mask"][box.top : box.bottom, box.left : box.right]
    out[..., 0], out[..., 1] = lungs_in_view(region, max(prepared.image.pixels.shape), side)
    return out


def film_thumbnail(gray: np.ndarray) -> np.ndarray:
    """The shortcut audit's features: the whole film at 16x16 plus five global intensity statistics.

    Whole film, not the network's crop: the audit asks how much of a dataset's label can be read off
    framing and exposure alone, which is what a network can learn when it is not made to look elsewhere.
    """
    import cv2

    small = cv2.resize(gray, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    stats = [gray.mean(), gray.std(), *np.percentile(gray[::4, ::4], (5, 50, 95))]
    return np.concatenate([small.ravel(), np.asarray(stats, np.float32)]) / np.float32(255.0)


def hold_out_lesion_films(rows: list[dict], fraction: float = LESION_TEST_FRACTION) -> int:
    """Put a fixed ``fraction`` of the duplicate groups that hold lesion-boxed films in the test split.

    Chosen by a hash of the group's file contents, not by the split's seed, so every training run (any
    seed, any LOSO fold, the shipped model) leaves out the same films, labels and boxes alike.
    Returns how many films were held out.
    """
    members = defaultdict(list)
    for row in rows:
        members[row["group"]].append(row)
    held = 0
    for group_rows in members.values():
        if not any(row.get("lesions") for row in group_rows):
            continue
        key = min(row["md5"] for row in group_rows)
        if int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction:
            for row in group_rows:
                row["split"] = "test"
                row["lesion_test"] = 1
                held += 1
    return held


class _ShardReader:
    """Reads single images back from written shards (memory-mapped), for duplicate confirmation.

    Only the most recently used shards stay mapped: every page read through a mapping stays in the
    process's resident memory until it is unmapped, so keeping them all would grow with the dataset.
    """

    MAX_OPEN = 8

    def __init__(self, folder: Path):
        self.folder = folder
        self.open: OrderedDict[str, np.ndarray] = OrderedDict()

    def image(self, row: dict) -> np.ndarray:
        shard = row["shard"]
        if shard in self.open:
            self.open.move_to_end(shard)
        else:
            while len(self.open) >= self.MAX_OPEN:
                self.open.popitem(last=False)
            self.open[shard] = np.load(self.folder / shard, mmap_mode="r")
        return np.array(self.open[shard][row["offset"]])  # a copy, so no view keeps a mapping alive


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float32).ravel() - a.mean()
    b = b.astype(np.float32).ravel() - b.mean()
    denominator = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return 1.0 if denominator == 0 else float(np.dot(a, b)) / denominator


def group_duplicates(
    rows: list[dict], max_bits: int, min_correlation: float, image_of: Callable[[dict], np.ndarray]
) -> tuple[list[int], dict]:
    """Union exact (same MD5) and near (close hash, confirmed by pixel correlation) duplicates."""
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        root_i, root_j = find(i), find(j)
        if root_i != root_j:
            parent[max(root_i, root_j)] = min(root_i, root_j)

    exact = 0
    first_by_md5: dict[str, int] = {}
    for i, row in enumerate(rows):
        if row["md5"] in first_by_md5:
            union(first_by_md5[row["md5"]], i)
            exact += 1
        else:
            first_by_md5[row["md5"]] = i

    near = 0
    hashes = np.array([int(row["phash"], 16) for row in rows], dtype=np.uint64)
    for i in range(len(rows) - 1):
        distances = np.bitwise_count(hashes[i + 1 :] ^ hashes[i])
        for j in (np.nonzero(distances <= max_bits)[0] + i + 1).tolist():
            if find(i) == find(j) or _correlation(image_of(rows[i]), image_of(rows[j])) < min_correlation:
                continue
            near += 1
            union(i, j)

    groups = [find(i) for i in range(len(rows))]
    for row, group in zip(rows, groups, strict=True):
        row["group"] = group
    labels_by_group = defaultdict(set)
    for row in rows:
        labels_by_group[row["group"]].add(row["label"])
    conflicting = sum(1 for labels in labels_by_group.values() if len(labels) > 1)
    return groups, {"exact": exact, "near": near, "groups_with_conflicting_labels": conflicting}


def assign_splits(rows: list[dict], groups: list[int], params: dict) -> None:
    """Seeded split of duplicate groups, stratified by (label, source) so every source reaches test."""
    rng = np.random.default_rng(int(params["seed"]))
    members = defaultdict(list)
    for row, group in zip(rows, groups, strict=True):
        members[group].append(row)
    strata = defaultdict(list)
    for group, group_rows in sorted(members.items()):
        label = max(r["label"] for r in group_rows)
        strata[(label, group_rows[0]["source"])].append(group)
    for _, stratum in sorted(strata.items()):
        order = [stratum[i] for i in rng.permutation(len(stratum))]
        n = len(order)
        n_test = round(n * params["test_fraction"])
        n_val = round(n * params["val_fraction"])
        if n >= 3:  # a stratum of three or more reaches every split
            n_test, n_val = max(1, n_test), max(1, n_val)
        for position, group in enumerate(order):
            split = "test" if position < n_test else "val" if position < n_test + n_val else "train"
            for row in members[group]:
                row["split"] = split


def _check_trainable(rows: list[dict]) -> None:
    labels = {row["label"] for row in rows if row["split"] == "train"}
    if labels != {0, 1}:
        raise DatasetError(
            "the training split needs both Normal and Tuberculosis images; "
            f"found only {'Tuberculosis' if labels == {1} else 'Normal'}"
        )


def _counts(rows: list[dict]) -> dict:
    counts = Counter(
        (row["split"], "Tuberculosis" if row["label"] else "Normal", row["source"]) for row in rows
    )
    nested: dict = {}
    for (split, label, source), count in sorted(counts.items()):
        nested.setdefault(split, {}).setdefault(label, {})[source] = count
    return nested


def load_split(ingest_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """The ``(n, side, side, 1)`` uint8 images, int labels and manifest rows of one split."""
    ingest_dir = Path(ingest_dir)
    with open(ingest_dir / Layout.MANIFEST, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == split]
    side = json.loads((ingest_dir / Layout.SUMMARY).read_text())["side"]
    images = np.empty((len(rows), side, side, 1), dtype=np.uint8)
    by_shard = defaultdict(list)
    for position, row in enumerate(rows):
        by_shard[row["shard"]].append((position, int(row["offset"])))
    for shard, places in by_shard.items():
        data = np.load(ingest_dir / Layout.SHARDS / shard, mmap_mode="r")
        positions, offsets = zip(*places, strict=True)
        images[list(positions), :, :, 0] = data[list(offsets)]
    labels = np.array([int(row["label"]) for row in rows], dtype=np.int32)
    return images, labels, rows


def load_extras(ingest_dir: str | Path, rows: list[dict]) -> dict[str, np.ndarray]:
    """Lung masks (n, side, side, 2) and audit thumbnails of ``rows`` (as :func:`load_split` returns them).

    An ingest made before these were written has no mask shards: the masks come back empty and
    ``available`` is False, so the evidence measures say "not measured" instead of zero.
    """
    ingest_dir = Path(ingest_dir)
    side = json.loads((ingest_dir / Layout.SUMMARY).read_text())["side"]
    masks = np.zeros((len(rows), side, side, 2), np.uint8)
    thumbs = np.zeros((len(rows), THUMB_SIDE * THUMB_SIDE + 5), np.float32)
    available = True
    by_shard = defaultdict(list)
    for position, row in enumerate(rows):
        by_shard[row["shard"]].append((position, int(row["offset"])))
    for shard, places in by_shard.items():
        mask_file = ingest_dir / MASKS_DIR / shard
        if not mask_file.exists():
            available = False
            continue
        positions, offsets = (list(v) for v in zip(*places, strict=True))
        masks[positions] = np.load(mask_file, mmap_mode="r")[offsets]
        thumbs[positions] = np.load(ingest_dir / THUMBS_DIR / shard, mmap_mode="r")[offsets]
    return {"masks": masks, "thumbs": thumbs, "available": available}


def lesion_mask(boxes_in_frame, side: int) -> np.ndarray:
    """(side, side) uint8 0/1: boxes already in the network's frame (:func:`boxes_in_view`), filled out
    to whole pixels, so every path that measures lesion evidence draws the boxes alike."""
    out = np.zeros((side, side), np.uint8)
    for x0, y0, x1, y1 in boxes_in_frame:
        out[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))] = 1
    return out


def lesion_masks(rows: list[dict], side: int) -> np.ndarray:
    """(n, side, side) uint8 0/1: the radiologists' boxes of each row in the network's frame (0 if none)."""
    out = np.zeros((len(rows), side, side), np.uint8)
    for i, row in enumerate(rows):
        out[i] = lesion_mask(json.loads(row.get("lesions") or "[]"), side)
    return out
