"""Training pictures for the lung network beyond the radiologists' masks, and how films are known.

The masks cover two sources (Shenzhen, JSRT). What they never show has to come from elsewhere:
pictures with no lungs at all (``synthetic_negative``: random families drawn fresh, with empty masks)
and films of the sources without masks, labelled by the lung model in use (distillation: a cheaper
student learns the teacher's answers on the films the clinic will send). Films are known by their
bytes (``content_sha256``), so a copy, a zip member or another spelling of a path is the same film:
the mask set's own images are never taught, and the census can leave out whatever a model trained on.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from cxr_core.modelling.lungs import lung_input, mask_to_frame

NEGATIVE_FAMILIES = ("smooth field", "texture", "document", "shapes")


def synthetic_negative(family: str, rng: np.random.Generator) -> np.ndarray:
    """One picture with no lungs in it, of a kind a screening desk is handed by mistake, drawn at random.

    A lung network trained on chest films only has never been told what "no lungs" looks like, so
    whether it finds lung-shaped regions in a gradient or a page of text is a matter of its seed (two
    96 px networks of one recipe, 2026-12-04: one refused the tests' four pictures, one accepted two).
    Trained on these with an empty mask, "nothing here" is learnt. Each family is a random process
    (smooth intensity fields of 1-3 waves, blurred noise of any grain, lines of random characters in
    random fonts, random shapes on a smooth ground), not a copy of the tests' pictures. Tried on a 96 px
    network: every probe refused, but its twin trained on JSRT alone lost 0.04 of Dice on Shenzhen
    (docs/performance.md), so ``lungs.negatives`` is off by default.
    """
    h, w = (int(v) for v in rng.integers(320, 769, 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if family == "smooth field":
        field = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(1, 4))):
            angle, cycles = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 1.5)
            along = (np.cos(angle) * xx / w + np.sin(angle) * yy / h) * 2 * np.pi * cycles
            field += rng.uniform(0.3, 1.0) * np.cos(along + rng.uniform(0, 2 * np.pi))
    elif family == "texture":
        field = rng.normal(0, 1, (h, w)).astype(np.float32)
        sigma = float(rng.choice([0.0, rng.uniform(0.5, 4.0), rng.uniform(4.0, 40.0)]))
        if sigma > 0:
            field = cv2.GaussianBlur(field, (0, 0), sigma)
    elif family == "document":
        field = np.full((h, w), int(rng.integers(170, 256)), np.uint8)  # OpenCV draws text on 8 bits
        ink, font = int(rng.integers(0, 91)), int(rng.choice([0, 1, 2, 3, 4, 6, 7]))
        scale, step = rng.uniform(0.3, 1.2), int(rng.integers(14, 48))
        letters = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:-"))
        for top in range(int(rng.integers(10, 60)), h, step):
            if rng.random() < 0.15:  # a rule or a table line now and then
                cv2.line(field, (int(rng.integers(0, w // 4)), top), (int(rng.integers(w // 2, w)), top), ink, 1)
                continue
            text = "".join(rng.choice(letters, int(rng.integers(5, 60))))
            cv2.putText(field, text, (int(rng.integers(0, 40)), top), font, scale, ink, int(rng.integers(1, 3)))
        field = field.astype(np.float32)
    elif family == "shapes":
        field = rng.uniform(0, 1) * (xx / w) + rng.uniform(0, 1) * (yy / h)
        for _ in range(int(rng.integers(2, 12))):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            size = (int(rng.integers(10, w // 3)), int(rng.integers(10, h // 3)))
            value = float(rng.uniform(-1, 2))
            if rng.random() < 0.5:
                cv2.ellipse(field, centre, size, float(rng.uniform(0, 180)), 0, 360, value, -1)
            else:
                cv2.rectangle(field, centre, (centre[0] + size[0], centre[1] + size[1]), value, -1)
        field = cv2.GaussianBlur(field, (0, 0), float(rng.uniform(0.5, 6.0)))
    else:
        raise ValueError(f"unknown family {family!r}")
    lo, hi = np.percentile(field, (1, 99))
    low, high = sorted(rng.uniform(0, 255, 2))
    low = min(low, 195.0)
    high = max(high, low + 60)  # a picture, not a flat field: the decoder refuses those before any network
    out = (np.clip((field - lo) / max(float(hi - lo), 1e-6), 0, 1) * (high - low) + low)
    return np.clip(out, 0, 255).astype(np.uint8)


def negative_pairs(count: int, side: int, mode: str, seed: int):
    """``count`` synthetic no-lung pictures as the lung network sees them, with empty masks."""
    rng = np.random.default_rng([seed, 7919])
    X = np.zeros((count, side, side, 1), np.uint8)
    for i in range(count):
        X[i, :, :, 0], _ = lung_input(synthetic_negative(NEGATIVE_FAMILIES[i % len(NEGATIVE_FAMILIES)], rng), side, mode)
    return X, np.zeros((count, side, side, 1), np.float32)


def content_sha256(data: bytes) -> str:
    """A film's identity whatever its path: the same bytes in a zip, a copy or under another root."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def mask_set_hashes(records) -> set[str]:
    """The content hashes of the mask set's own images (what a lung model trained on, or was tested on)."""
    hashes = set()
    for record in records:
        with open(record["image_path"], "rb") as fh:
            hashes.add(content_sha256(fh.read()))
    return hashes


def choose_distillation_films(films_root, count: int, seed: int, mask_records=()) -> list:
    """``count`` films of a labelled X-ray dataset, taken in turn from each source, seeded.

    Taken in turn so that a source with few films (the one the masks never showed) is not drowned by a
    large one. Never a film of a source the mask set has (its films may be there re-encoded: the
    sample's Shenzhen films are 512 px copies of the shared ones), nor any file whose bytes are a mask
    image's: those have a radiologist's mask and, for the held-out ones, must stay unseen."""
    from cxr_core.pipeline.datasets import discover, read_record_bytes

    masked_sources = {r["source"] for r in mask_records}
    masked_content = mask_set_hashes(mask_records)
    by_source: dict[str, list] = {}
    for record in discover(films_root).records:
        if record.source in masked_sources or content_sha256(read_record_bytes(record)) in masked_content:
            continue
        by_source.setdefault(record.source, []).append(record)
    rng = np.random.default_rng([seed, 4241])
    queues = {source: [rows[i] for i in rng.permutation(len(rows))]
              for source, rows in sorted(by_source.items())}  # fmt: skip
    chosen: list = []
    while len(chosen) < count and any(queues.values()):
        for source in sorted(queues):
            if queues[source] and len(chosen) < count:
                chosen.append(queues[source].pop())
    return chosen


class Distillation(NamedTuple):
    X: np.ndarray  # the student's inputs (n, side, side, 1) uint8
    Y: np.ndarray  # the teacher's masks in the student's frame (n, side, side, 1) float32
    kept: list  # the films taught, as records
    hashes: set  # their content hashes (what the census must leave out)
    teacher_refused: list  # display paths of films the teacher itself found no lungs in
    unreadable: list  # display paths of films that could not be read


def distillation_pairs(teacher, records, side: int, mode: str, soft: bool = True) -> Distillation:
    """The student's inputs and the teacher's masks for ``records``.

    The masks exist for two sources only (Shenzhen, JSRT); the 96 and 64 px networks then joined both
    lungs through the heart on rahmandb TB films, which the 128 px network does not (issue #23.1). The
    teacher's mask of each film, in the student's own frame, shows the student those films. A film the
    teacher itself finds implausible teaches nothing and is left out, as is one that cannot be read:
    both are counted, so a shortfall is seen in the metadata rather than lost."""
    from cxr_core.errors import CxrError
    from cxr_core.imaging.decode import read_image
    from cxr_core.pipeline.datasets import read_record_bytes

    X, Y, kept, hashes, refused, unreadable = [], [], [], set(), [], []
    for record in records:
        try:
            data = read_record_bytes(record)
            gray = read_image(data).pixels
        except CxrError:
            unreadable.append(record.display_path)
            continue
        verdict = teacher.segment(gray)
        if not verdict["ok"]:
            refused.append(record.display_path)
            continue
        small, frame = lung_input(gray, side, mode)
        X.append(small)
        Y.append(mask_to_frame(verdict["mask"], frame, soft=soft))
        kept.append(record)
        hashes.add(content_sha256(data))
    shape = (len(kept), side, side, 1)
    return Distillation(np.asarray(X, np.uint8).reshape(shape), np.asarray(Y, np.float32).reshape(shape),
                        kept, hashes, refused, unreadable)  # fmt: skip
