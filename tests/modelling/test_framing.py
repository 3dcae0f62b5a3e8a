"""Framing robustness of the shipped model: how a hospital frames a film must not decide the result.

TB films cropped to a wide strip (the middle 60 % of their rows) and normal films padded with black bars
to a 4:3 landscape frame go through the same path as any film (lung check, lung box, preprocessing); at
most 5 % of the decisions may change. Films: the shipped model's own held-out test films, every source.
"""

import csv
from pathlib import Path

import numpy as np
import pytest

from cxr_core.errors import ImageError
from cxr_core.imaging.decode import read_image
from cxr_core.pipeline.evaluate import crop_wide, pad_bars
from cxr_core.registry.store import Registry

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_at_most_five_percent_of_decisions_change_with_the_framing(shared_cxr):
    from cxr_core.modelling.predictor import Predictor

    model_dir = Registry(ROOT / "models").version_dir(Registry(ROOT / "models").current_version())
    predictor = Predictor(model_dir)
    with open(model_dir / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    picked = rows  # every held-out test film of every source
    assert len({row["source"] for row in picked}) >= 4 and len(picked) >= 400
    originals, changed, recorded, refused = [], [], [], 0
    for row in picked:
        image = read_image(shared_cxr / row["path"])
        moved = crop_wide(image.pixels) if row["label"] == "1" else pad_bars(image.pixels)
        try:
            original = predictor.model_input_from_image(image)
            reframed = predictor.model_input_from_image(image.with_pixels(moved))
        except ImageError:  # refused by the lung check: not scored, so a clinician reads it; not a wrong call
            refused += 1
            continue
        originals.append(original.pixels)
        changed.append(reframed.pixels)
        recorded.append(float(row["probability"]))
    before = predictor.predict(np.stack(originals)[..., None])
    after = predictor.predict(np.stack(changed)[..., None])
    flipped = sum(a.label != b.label for a, b in zip(before, after, strict=True))
    assert flipped / len(before) <= 0.05, f"{flipped} of {len(before)} decisions changed with the framing"
    assert refused / len(picked) <= 0.01, f"{refused} films were refused once reframed"
    # The recorded test scores are what this path gives: the evaluation measured the same thing.
    np.testing.assert_allclose([p.probability for p in before], recorded, atol=2e-3)


@pytest.mark.slow
def test_strips_and_burnt_in_markers_neither_decide_nor_draw_the_evidence(shared_cxr):
    """Every held-out test film of the shipped model with a strip of 5-15 % of its height added on one
    edge (dark or bright) and a text marker burnt in: the view stops at the film's content, at most 2 %
    of decisions change, and the map's peak lies on the strip on at most 2 %."""
    from cxr_core.modelling.predictor import Predictor
    from cxr_core.pipeline.evaluate import add_strip_and_marker, peak_in_film

    model_dir = Registry(ROOT / "models").version_dir(Registry(ROOT / "models").current_version())
    predictor = Predictor(model_dir)
    with open(model_dir / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 400
    originals, striped, strips, edges = [], [], [], set()
    for index, row in enumerate(rows):
        image = read_image(shared_cxr / row["path"])
        changed, strip = add_strip_and_marker(image.pixels, seed=index)
        try:
            original = predictor.model_input_from_image(image)
            moved = predictor.model_input_from_image(image.with_pixels(changed))
        except ImageError:
            continue
        top, left, bottom, right = strip
        box = moved.box  # the network's view never reaches into the strip
        assert box.bottom <= top or box.top >= bottom or box.right <= left or box.left >= right, row["path"]
        edges.add((top == 0, left == 0, bottom == changed.shape[0], right == changed.shape[1]))
        originals.append(original.pixels)
        striped.append(moved)
        strips.append(strip)
    assert len(edges) == 4 and len(striped) >= 0.98 * len(rows)  # all four edges were tried
    before = predictor.predict(np.stack(originals)[..., None])
    after = predictor.predict(np.stack([m.pixels for m in striped])[..., None])
    flipped = sum(a.label != b.label for a, b in zip(before, after, strict=True))
    on_strip = 0
    for prepared, strip, prediction in zip(striped, strips, after, strict=True):
        peak = peak_in_film(prediction.raw_heatmap, prepared.box)
        on_strip += int(peak is not None and strip[0] <= peak[0] < strip[2] and strip[1] <= peak[1] < strip[3])
    assert flipped / len(after) <= 0.02, f"{flipped} of {len(after)} decisions changed with a strip and a marker"
    assert on_strip / len(after) <= 0.02, f"the evidence peaked on the strip on {on_strip} of {len(after)} films"


# A known limit of the shipped model, reported rather than hidden: with markers in words and fonts its
# training never drew (evaluate.HELD_OUT_MARKERS), 14 of 574 decisions change (2.4 %; the model before it
# 20, 3.5 %), above the 2 % the strips target allows; the quality gate refuses a candidate that does this.
# Strict: the day a shipped model meets it, this mark fails and must go.
@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="markers unlike the training's move 2.4 % of the shipped model's decisions")
def test_markers_in_words_and_fonts_training_never_drew_change_at_most_two_percent_of_decisions(shared_cxr):
    from cxr_core.modelling.predictor import Predictor
    from cxr_core.pipeline.evaluate import add_strip_and_marker

    model_dir = Registry(ROOT / "models").version_dir(Registry(ROOT / "models").current_version())
    predictor = Predictor(model_dir)
    with open(model_dir / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    originals, changed = [], []
    for index, row in enumerate(rows):
        image = read_image(shared_cxr / row["path"])
        marked, _ = add_strip_and_marker(image.pixels, seed=index, held_out=True)
        try:
            originals.append(predictor.model_input_from_image(image).pixels)
            changed.append(predictor.model_input_from_image(image.with_pixels(marked)).pixels)
        except ImageError:
            originals = originals[: len(changed)]
            continue
    assert len(changed) >= 0.98 * len(rows) >= 400
    before = predictor.predict(np.stack(originals)[..., None])
    after = predictor.predict(np.stack(changed)[..., None])
    flipped = sum(a.label != b.label for a, b in zip(before, after, strict=True))
    assert flipped / len(after) <= 0.02, f"{flipped} of {len(after)} decisions changed with markers unlike training's"
