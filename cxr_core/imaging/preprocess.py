"""The one preprocessing function shared by ingestion, training, evaluation, the CLI and the dashboard.

The original system resized with OpenCV in training and with Pillow in serving, so the network saw
different inputs in the clinic than in the lab. Here every path calls :func:`preprocess` on the 2-D
uint8 picture that :func:`cxr_core.imaging.decode.read_image` returns, and nothing else touches pixels.

What it does and why:

1. **Downscale early** (area interpolation, to at most ``4 * side`` on the long edge): the steps below
   only need coarse structure, and a 3000x3000 radiograph should cost no more than a 512x512 one.
2. **Trim uniform borders**: rows and columns at the edges that are nearly constant (black or white
   frames, scanner margins) are cut, at most a quarter of each side. Different hospitals frame
   differently; a border says where an image came from, not whether the patient has TB.
3. **Centre-crop to a square** along the longer axis. Stretching would distort anatomy differently for
   each aspect ratio and padding would add bars, both cues of the source site; a centre crop keeps the
   chest at the same scale and loses only lateral soft tissue or neck/abdomen.
4. **Resize** to ``side x side`` with area interpolation (anti-aliased).
5. **Histogram-equalise** the small image. Exposure, bit depth, windowing and JPEG re-encoding differ
   between sources and formats; equalisation maps them onto one intensity distribution, which is what
   makes the same picture given as PNG, JPEG, 16-bit PNG or DICOM score alike.

The result stays uint8 so shards are compact and serving feeds exactly what training saw; the model's
own ``Rescaling`` layer maps it to [0, 1].
"""

import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from cxr_core.errors import CxrError, ImageError
from cxr_core.imaging.decode import DecodedImage, check_plausible_radiograph, read_image

MODEL_SIDE = 128


class CropBox(NamedTuple):
    """The region of the original image (pixel rows/columns, end exclusive) the model looked at."""

    top: int
    left: int
    bottom: int
    right: int


MAX_BORDER_FRACTION = 0.25
# A row/column counts as border when its spread is tiny (a frame) or it is almost black (a margin).
BORDER_STD = 6.0
BORDER_DARK_MEAN = 8.0


@dataclass
class ModelInput:
    """One film on its way to the network: what was decoded, what the model sees, and where that lies."""

    image: DecodedImage
    pixels: np.ndarray  # (side, side) uint8, exactly what training shards hold
    box: CropBox
    lungs: dict | None = None  # the lung model's result: mask (original size, 0/255), box, ok, reason


NOT_A_CHEST = "this does not look like a frontal chest X-ray: no plausible pair of lung fields was found"


def to_model_input(
    source: bytes | str | os.PathLike,
    side: int = MODEL_SIDE,
    *,
    lungs=None,
    crop_to_lungs: bool = False,
    lung_margin: float = 0.08,
    mask_to_lungs: bool = False,
    **read_options,
) -> ModelInput:
    """Decode -> plausibility check -> (lung fields) -> preprocess: the one path from a file to the network.

    Ingest, serving and the benchmarks all call this, so a check added here applies to training and
    to the clinic alike; raises :class:`cxr_core.errors.ImageError` with a clinician-readable reason.
    ``lungs`` (an object with ``segment(gray)``, the lung model) adds the anatomical check: a film
    without a plausible pair of lung fields (a gradient, a page of text, a photo) is refused, not
    scored; with ``crop_to_lungs`` the network sees the lungs' box (plus ``lung_margin``) instead of the
    whole film, which leaves the hospital's framing outside; ``mask_to_lungs`` also blanks what lies
    outside the (slightly grown) lung fields inside that box: heart, mediastinum, abdomen, shoulders.
    """
    film = decode_for_model(source, lungs=lungs, **read_options)
    (prepared,) = finish_model_inputs(
        [film], side, lungs=lungs, crop_to_lungs=crop_to_lungs, lung_margin=lung_margin,
        mask_to_lungs=mask_to_lungs,
    )  # fmt: skip
    if isinstance(prepared, CxrError):
        raise prepared
    return prepared


class DecodedFilm(NamedTuple):
    """A film decoded and checked, with the lung model's input already made from it (or None).

    The first half of :func:`to_model_input`: what can run per file in any thread, before the lung
    network, which is cheaper per film when many films go through it in one call.
    """

    image: DecodedImage
    lung_input: tuple | None  # (small uint8 input, frame) of the lung model


def decode_for_model(source: bytes | str | os.PathLike, *, lungs=None, **read_options) -> DecodedFilm:
    """Decode and check one file and make the lung model's input; raises ImageError like to_model_input."""
    image = read_image(source, **read_options)
    check_plausible_radiograph(image)
    staged = lungs.lung_input(image.pixels) if lungs is not None and hasattr(lungs, "lung_input") else None
    return DecodedFilm(image, staged)


def finish_model_inputs(
    films: list,
    side: int = MODEL_SIDE,
    *,
    lungs=None,
    crop_to_lungs: bool = False,
    lung_margin: float = 0.08,
    mask_to_lungs: bool = False,
    map_fn=map,
) -> list:
    """The second half of :func:`to_model_input` for many decoded films: the lung network once for all.

    ``films`` holds :class:`DecodedFilm` or the error a file's decoding raised (kept in place, so the
    result lines up with the input); each result is a :class:`ModelInput` or a
    :class:`cxr_core.errors.CxrError` with the reason. Each film's own steps are exactly those of a
    single film; ``map_fn`` (e.g. a thread pool's ``map``) runs them, the network call stays one.
    """
    probabilities: dict[int, np.ndarray] = {}
    if lungs is not None and hasattr(lungs, "probabilities"):
        staged = [i for i, film in enumerate(films) if isinstance(film, DecodedFilm) and film.lung_input]
        if staged:
            found = lungs.probabilities([films[i].lung_input[0] for i in staged])
            probabilities = dict(zip(staged, found, strict=True))

    def finish(index: int):
        film = films[index]
        if not isinstance(film, DecodedFilm):
            return film
        found = None
        if index in probabilities:
            found = lungs.segment_from(probabilities[index], film.lung_input[1], film.image.pixels)
        try:
            return model_input_from_image(
                film.image, side, lungs=lungs, crop_to_lungs=crop_to_lungs, lung_margin=lung_margin,
                mask_to_lungs=mask_to_lungs, found=found,
            )  # fmt: skip
        except CxrError as error:
            return error

    return list(map_fn(finish, range(len(films))))


def model_input_from_image(
    image: DecodedImage,
    side: int = MODEL_SIDE,
    *,
    lungs=None,
    crop_to_lungs: bool = False,
    lung_margin=0.08,
    mask_to_lungs: bool = False,
    found: dict | None = None,
) -> ModelInput:
    """The steps of :func:`to_model_input` after decoding, for a picture already in memory (a framing test).

    ``found`` is the lung model's result for this picture when it was already computed (in a batch).
    """
    if lungs is not None:
        if found is None:
            found = lungs.segment(image.pixels)
        if not found["ok"]:
            raise ImageError(f"{NOT_A_CHEST} ({found['reason']})")
    else:
        found = None
    if crop_to_lungs and found is not None:
        mask = found["mask"] if mask_to_lungs else None
        pixels, box = preprocess_lung_box(image.pixels, found["box"], side, lung_margin, mask)
    else:
        pixels, box = preprocess_with_box(image.pixels, side)
    return ModelInput(image=image, pixels=pixels, box=box, lungs=found)


def preprocess_lung_box(
    gray: np.ndarray,
    lung_box: tuple[int, int, int, int],
    side: int = MODEL_SIDE,
    margin: float = 0.08,
    lung_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, CropBox]:
    """The square around the lung fields (grown by ``margin`` of their size), area-resized and equalised.

    The square is centred on the lungs and kept inside the picture; a box too small to be lungs falls
    back to the whole-film path. With ``lung_mask`` (the lung model's mask at the picture's size) what
    lies outside the lungs is faded to black, see :func:`blank_outside_lungs`.
    """
    height, width = gray.shape
    top, left, bottom, right = (int(v) for v in lung_box)
    if bottom - top < 0.2 * height or right - left < 0.2 * width:
        return preprocess_with_box(gray, side)
    # The square stays inside the film's content: strips of padding, scanner bands and frames along an
    # edge are uniform lines that the border trim finds; a box grown past them put them in the network's
    # view, and the strongest evidence of such films lay on the strip.
    c_top, c_left, c_bottom, c_right = content_box(gray)
    c_height, c_width = c_bottom - c_top, c_right - c_left
    centre_y, centre_x = (top + bottom) / 2.0, (left + right) / 2.0
    half = max(bottom - top, right - left) * (1.0 + 2.0 * margin) / 2.0
    half_y, half_x = min(half, c_height / 2.0), min(half, c_width / 2.0)
    y0 = int(round(min(max(centre_y - half_y, c_top), c_bottom - 2 * half_y)))
    x0 = int(round(min(max(centre_x - half_x, c_left), c_right - 2 * half_x)))
    y1, x1 = min(c_bottom, y0 + int(round(2 * half_y))), min(c_right, x0 + int(round(2 * half_x)))
    small = cv2.resize(gray[y0:y1, x0:x1], (side, side), interpolation=cv2.INTER_AREA)
    small = cv2.equalizeHist(small)
    if lung_mask is not None:
        small = blank_outside_lungs(small, lung_mask[y0:y1, x0:x1])
    return small, CropBox(y0, x0, y1, x1)


LUNG_MASK_GROWTH = 0.04  # of the input side: keeps the pleura, costophrenic angles and apices in view


def blank_outside_lungs(small: np.ndarray, mask_crop: np.ndarray) -> np.ndarray:
    """Fade everything outside the (grown, soft-edged) lung fields to black.

    The lung box still holds the heart, mediastinum, upper abdomen and shoulders, and Grad-CAM showed the
    network reading them, more so at hospitals it had not seen. Blanking them leaves only lung tissue as
    evidence. The mask is grown a little and its edge blurred so that lesions at the lung border (pleural
    disease, apical cavities) and the mask's own outline are not turned into sharp cues.
    """
    side = small.shape[0]
    mask = cv2.resize(mask_crop, (side, side), interpolation=cv2.INTER_AREA) >= 128
    grow = max(1, int(round(LUNG_MASK_GROWTH * side)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    soft = cv2.GaussianBlur(cv2.dilate(mask.astype(np.float32), kernel), (0, 0), sigmaX=grow / 2.0)
    soft = np.maximum(soft, mask)  # the lung fields themselves stay exactly as they were
    return np.clip(small.astype(np.float32) * soft + 0.5, 0, 255).astype(np.uint8)


def preprocess(gray: np.ndarray, side: int = MODEL_SIDE) -> np.ndarray:
    """Turn a 2-D uint8 grayscale radiograph of any size into the model's ``side x side`` uint8 input."""
    return preprocess_with_box(gray, side)[0]


def preprocess_with_box(gray: np.ndarray, side: int = MODEL_SIDE) -> tuple[np.ndarray, CropBox]:
    """:func:`preprocess`, also telling which region of the original the model saw.

    Grad-CAM needs the box to lay its heatmap back onto the clinician's full-size picture in the
    right place, since borders were trimmed and the long axis cropped.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"preprocess expects a 2-D uint8 image, got {gray.dtype} {gray.shape}")
    work, scale = _downscale(gray, 4 * side)
    work, (top, left) = _trim_uniform_borders(work)
    work, (dy, dx) = _centre_square(work)
    small = cv2.resize(work, (side, side), interpolation=cv2.INTER_AREA)
    height, width = work.shape
    box = CropBox(
        top=round((top + dy) / scale),
        left=round((left + dx) / scale),
        bottom=min(gray.shape[0], round((top + dy + height) / scale)),
        right=min(gray.shape[1], round((left + dx + width) / scale)),
    )
    return cv2.equalizeHist(small), box


def content_box(gray: np.ndarray) -> CropBox:
    """The film's content in original pixels: the picture less the uniform strips along its edges.

    The same downscale and trim as :func:`preprocess_with_box` (lines nearly constant, or almost black,
    up to a quarter of each side), so every path agrees on where the film ends.
    """
    work, scale = _downscale(gray, 4 * MODEL_SIDE)
    trimmed, (top, left) = _trim_uniform_borders(work)
    height, width = trimmed.shape
    # Where a strip was found, one more line goes: downscaling blends the strip's last line into the
    # film's first, which then no longer looks uniform but still carries the strip.
    bottom_gap, right_gap = work.shape[0] - top - height, work.shape[1] - left - width
    if top:
        top, height = top + 1, height - 1
    if bottom_gap:
        height -= 1
    if left:
        left, width = left + 1, width - 1
    if right_gap:
        width -= 1
    return CropBox(  # rounded inwards: the content box never reaches back into a strip
        top=math.ceil(top / scale),
        left=math.ceil(left / scale),
        bottom=min(gray.shape[0], math.floor((top + height) / scale)),
        right=min(gray.shape[1], math.floor((left + width) / scale)),
    )


def _downscale(gray: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    height, width = gray.shape
    longest = max(height, width)
    if longest <= max_side:
        return gray, 1.0
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA), scale


def _border_run(means: np.ndarray, stds: np.ndarray, limit: int) -> int:
    """How many leading lines are border, stopping at the first line with content."""
    is_border = (stds < BORDER_STD) | (means < BORDER_DARK_MEAN)
    run = 0
    while run < limit and is_border[run]:
        run += 1
    return run


FIRST_BORDER_BLOCK = 16  # lines measured at once from each edge; most films have no strip at all


def _edge_run(lines: np.ndarray, limit: int) -> int:
    """Border lines from one edge, measuring only as far as the run goes.

    ``lines`` is a view of the picture whose rows are its lines counted from that edge (``gray``,
    ``gray[::-1]``, ``gray.T``, ``gray.T[::-1]``). Each line's mean and spread are computed exactly as
    over the whole picture (the same per-line reduction), but the picture's middle, which the run never
    reaches, is not measured: on every path that meets a film (lung input and content box) this was a
    quarter of the CPU of the lung network.
    """
    run, start, block = 0, 0, FIRST_BORDER_BLOCK
    while start < limit:
        stop = min(limit, start + block)
        # Never a block of one line: a lone column is contiguous, numpy would sum it pairwise instead of
        # line by line, and its spread could differ in the last bit right at BORDER_STD. The extra line
        # exists (limit is a quarter of the side) and is not judged.
        pixels = lines[start : max(stop, start + 2)].astype(np.float32)
        found = _border_run(pixels.mean(axis=1), pixels.std(axis=1), stop - start)
        run += found
        if found < stop - start:
            break
        start, block = stop, block * 4
    return run


def _trim_uniform_borders(gray: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    height, width = gray.shape
    if height < 8 or width < 8:
        return gray, (0, 0)
    row_limit = int(height * MAX_BORDER_FRACTION)
    col_limit = int(width * MAX_BORDER_FRACTION)
    # views, no copies: each edge's lines as rows, in the order the run walks them
    top = _edge_run(gray, row_limit)
    bottom = _edge_run(gray[::-1], row_limit)
    left = _edge_run(gray.T, col_limit)
    right = _edge_run(gray.T[::-1], col_limit)
    return gray[top : height - bottom, left : width - right], (top, left)


def _centre_square(gray: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    height, width = gray.shape
    side = min(height, width)
    top = (height - side) // 2
    left = (width - side) // 2
    return gray[top : top + side, left : left + side], (top, left)
