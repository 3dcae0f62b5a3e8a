"""Format parity: the same radiograph in any file format a clinic exports gets the same score.

For one real image per source, the shipped model's probability for the 8-bit PNG is compared with the
same picture as 16-bit PNG, JPEG q=95, DICOM MONOCHROME2 (16-bit, rescale slope/intercept, window),
DICOM MONOCHROME1 (inverted stored values) and a 3000-pixel upscale. Probabilities near 0 or 1 hide
differences (the sigmoid is flat there), so of the first few images of each source the one whose score
is closest to 0.5 is used: there a changed input moves the probability the most.
"""

import io

import cv2
import numpy as np
import pytest
from builders import make_dicom
from conftest import PROJECT_ROOT, SHARED_CXR, shared_records
from PIL import Image

from cxr_core.modelling.predictor import Predictor
from cxr_core.registry.store import Registry

TOLERANCE = 0.05
CANDIDATES = 40  # first images of each source considered when picking the most uncertain one
SOURCES = [("tbx11k", "Tuberculosis"), ("openist", "Normal"), ("shenzhen", "Normal")]
# A known weakness of the evidence-trained networks (v20261202-065311, v20261204-210202), measured and
# reported rather than hidden: they read sharpness as evidence, so the same film upscaled to 3,000 px
# (cubic) scores a median 0.024 higher (0.032 before), more than 0.05 on 34 % of the test films (model
# card, "Resolution and sharpness"). Strict:
# the day a shipped model passes (the cam-evidence-sharpness recipe does, its candidate was refused by
# the gate on sensitivity), this mark fails and must go.
UPSCALE_REGRESSION = pytest.mark.xfail(
    strict=True,
    reason="the shipped CAM network reads sharpness as evidence (README; docs/model-ablation.md, sharpness)",
)
VARIANTS = ["png16", "jpeg95", "dicom_monochrome2", "dicom_monochrome1", "upscale3000"]
# seen failing; openist's film holds, and tbx11k's since v20261204-210202 (its mark had to go: strict)
REGRESSED = {("shenzhen", "upscale3000")}
CASES = [
    pytest.param(source, variant, marks=UPSCALE_REGRESSION) if (source, variant) in REGRESSED else (source, variant)
    for source, _ in SOURCES
    for variant in VARIANTS
]


@pytest.fixture(scope="module")
def predictor(shared_cxr) -> Predictor:
    return Predictor(Registry(PROJECT_ROOT / "models").resolve())


def _encode(pixels: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def variants(gray: np.ndarray) -> dict[str, bytes]:
    """The same 8-bit picture in every export format under test."""
    wide = gray.astype(np.uint16)
    # MONOCHROME2, 16 bits stored; real value = 0.5 * stored - 1000; the window spans all of it.
    slope, intercept = 0.5, -1000.0
    low, high = intercept, slope * 65535 + intercept
    monochrome2 = make_dicom(
        wide * 257,
        bits_stored=16,
        slope=slope,
        intercept=intercept,
        window=((low + high) / 2, high - low + 1),
    )
    # MONOCHROME1, 12 bits stored: bright stored values are dark on screen, so bone is stored low.
    monochrome1 = make_dicom((255 - wide) * 16, photometric="MONOCHROME1", bits_stored=12)
    height, width = gray.shape
    scale = 3000 / max(height, width)  # keep the aspect ratio: a stretch is a different picture
    upscaled = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_CUBIC)
    return {
        "png8": _encode(gray),
        "png16": _encode(wide * 257),
        "jpeg95": _encode(gray, "JPEG", quality=95),
        "dicom_monochrome2": monochrome2,
        "dicom_monochrome1": monochrome1,
        "upscale3000": _encode(upscaled),
    }


@pytest.fixture(scope="module")
def scored(predictor) -> dict:
    """Per source: the chosen image, and every variant's decoded image and probability."""
    results = {}
    for source, label in SOURCES:
        paths = [SHARED_CXR / r["path"] for r in shared_records(source, label)[:CANDIDATES]]
        first = predictor.screen([(p.name, p) for p in paths])
        chosen = min(first, key=lambda s: abs(s.prediction.probability - 0.5))
        gray = np.array(Image.open(SHARED_CXR / source / label / chosen.name).convert("L"))
        encoded = variants(gray)
        screened = predictor.screen(list(encoded.items()))
        assert all(s.ok for s in screened), [(s.name, s.error) for s in screened if not s.ok]
        results[source] = {"name": chosen.name, "gray": gray, "by_variant": {s.name: s for s in screened}}
    return results


def _probability(entry: dict, variant: str) -> float:
    return entry["by_variant"][variant].prediction.probability


@pytest.mark.parametrize(("source", "variant"), CASES)
def test_every_format_scores_like_the_png(scored, source, variant):
    entry = scored[source]
    reference, other = _probability(entry, "png8"), _probability(entry, variant)
    assert abs(other - reference) <= TOLERANCE, (
        f"{source} {entry['name']}: PNG {reference:.4f} vs {variant} {other:.4f}"
    )


@pytest.mark.parametrize("source", [s for s, _ in SOURCES])
def test_the_variants_are_what_they_claim_to_be(scored, source):
    """Guards the test itself: each file really went down its decoder path and decoded to the picture."""
    entry = scored[source]
    gray, decoded = entry["gray"], {k: v.image for k, v in entry["by_variant"].items()}
    assert (decoded["png8"].format, decoded["png8"].bit_depth) == ("PNG", 8)
    assert (decoded["png16"].format, decoded["png16"].bit_depth) == ("PNG", 16)
    assert decoded["jpeg95"].format == "JPEG"
    assert (decoded["dicom_monochrome2"].format, decoded["dicom_monochrome2"].bit_depth) == ("DICOM", 16)
    assert decoded["dicom_monochrome2"].metadata.get("voi") == "window"
    assert (decoded["dicom_monochrome1"].format, decoded["dicom_monochrome1"].bit_depth) == ("DICOM", 12)
    assert max(decoded["upscale3000"].width, decoded["upscale3000"].height) == 3000
    for name in ("png16", "dicom_monochrome2", "dicom_monochrome1", "jpeg95"):
        pixels = decoded[name].pixels.astype(np.float32)
        correlation = np.corrcoef(pixels.ravel(), gray.astype(np.float32).ravel())[0, 1]
        assert correlation > 0.99, f"{name} decodes to a different picture (r={correlation:.3f})"
