"""Lung-field segmentation: a compact U-Net plus the pre/post-processing around it.

numpy + OpenCV at import time; Keras/TensorFlow only inside the functions that need them. Decoding is
the project's (:func:`cxr_core.imaging.decode.read_image`, 2-D uint8) and the border
handling is the classifier's (``cxr_core.preprocess._downscale`` + ``_trim_uniform_borders``), so the
lung model and the classifier look at the same region of the picture. Unlike the classifier, the
segmenter must see the whole trimmed frame, so instead of a centre-square crop the trimmed frame is
letterboxed (zero-padded to a square, ``mode="letterbox"``, the default and the mode lungs.keras was
trained with) or resized to the square ignoring its aspect ratio (``mode="stretch"``; lungs_stretch.keras).
Stretch measured marginally better Dice but refused fewer synthetic non-chest images: see RESULTS.md. The content is histogram-equalised like the classifier's input (the padding is
excluded from the histogram and stays 0).

Typical use: :class:`LungModel` (a registered lung model, loaded once) ``.segment(gray)`` gives the
mask at the picture's own size, its box, and whether it is a plausible pair of lung fields.

Licence of the training masks (see RESULTS.md): Shenzhen masks CC BY-NC-SA 4.0 (non-commercial),
JSRT/SCR research use only. A model trained on them is for non-commercial research use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from cxr_core.imaging.preprocess import _downscale, _trim_uniform_borders

SIDE = 128
THRESHOLD = 0.5


# --------------------------------------------------------------------------------------------- model
ARCHITECTURES = ("unet", "separable", "light", "light-add")


def build_unet(
    side: int = SIDE,
    base_filters: int = 8,
    depth: int = 4,
    name: str = "lung_unet",
    architecture: str = "unet",
):
    """Compact U-Net: uint8 (side, side, 1) in, sigmoid (side, side, 1) out.

    ``depth`` down-sampling levels with ``base_filters * 2**i`` filters each, a bottleneck of
    ``base_filters * 2**depth``; two 3x3 conv + BatchNorm + ReLU per block; transposed-conv up-sampling
    and skip concatenation. base 8 / depth 4 is ~0.47 M parameters.

    ``architecture="separable"`` makes every 3x3 convolution but the first depthwise-separable: about a
    fifth of the parameters for the same widths, for a lung model cheap enough to run on every film.

    ``architecture="light"`` gives the two full-resolution blocks (the encoder's first, the decoder's
    last) one convolution instead of two. At base 4 a network this small spends most of its CPU on
    those few channels over every pixel: at 96 px it is about 1.2x cheaper than the plain U-Net, where
    halving the input side or going separable cost the Dice or the refusal of non-chest pictures
    (docs/performance.md).

    ``architecture="light-add"`` is ``light`` whose decoder adds the up-sampled map to the skip instead
    of concatenating them, so the first convolution of every decoder block reads half the channels: the
    largest convolution of each level, halved. At 96 px base 4, trained, it costs 5.9x less CPU than the
    128 px U-Net sixteen films per call and 4.8x one film per call on a Xeon, where ``light`` alone stops
    near 4.4x (docs/performance.md).
    """
    import keras
    from keras import layers

    if side % (2**depth):
        raise ValueError(f"side {side} must be divisible by 2**depth = {2**depth}")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown lung architecture {architecture!r}; expected one of {ARCHITECTURES}")
    first = [True]

    def conv(filters):
        # the first convolution sees one channel: a separable one would have nothing to mix
        if architecture == "separable" and not first[0]:
            return layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)
        first[0] = False
        return layers.Conv2D(filters, 3, padding="same", use_bias=False)

    def block(x, filters, convolutions=2):
        for _ in range(convolutions):
            x = conv(filters)(x)
            x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(x)
        return x

    inputs = keras.Input((side, side, 1), dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    skips = []
    def convolutions(level):
        return 1 if architecture in ("light", "light-add") and level == 0 else 2  # level 0: full resolution

    for i in range(depth):
        x = block(x, base_filters * 2**i, convolutions(i))
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = block(x, base_filters * 2**depth)
    for i in reversed(range(depth)):
        x = layers.Conv2DTranspose(base_filters * 2**i, 2, strides=2, padding="same")(x)
        if architecture == "light-add":
            x = layers.Add()([x, skips[i]])  # the transposed convolution already gives the skip's width
        else:
            x = layers.Concatenate()([x, skips[i]])
        x = block(x, base_filters * 2**i, convolutions(i))
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="lungs")(x)
    return keras.Model(inputs, outputs, name=name)


def load_model(path):
    """Inference only: no compile step, safe mode (a model file cannot run code)."""
    import keras

    return keras.saving.load_model(str(path), compile=False, safe_mode=True)


# ------------------------------------------------------------------------------------- input/output
class Frame(NamedTuple):
    """What :func:`mask_to_original` needs to put a small prediction back onto the original picture."""

    shape: tuple  # original (height, width)
    top: int  # trimmed region in ORIGINAL pixels, end exclusive
    left: int
    bottom: int
    right: int
    y0: int  # content region inside the side x side model input (letterbox padding excluded)
    x0: int
    ch: int
    cw: int
    side: int
    mode: str


def lung_input(gray: np.ndarray, side: int = SIDE, mode: str = "letterbox") -> tuple[np.ndarray, Frame]:
    """2-D uint8 radiograph -> (side x side uint8 model input, Frame).

    Same downscale and uniform-border trim as the classifier's ``preprocess``; then the whole trimmed
    frame is kept: letterboxed into the square (``mode="letterbox"``) or resized to it ignoring the
    aspect ratio (``mode="stretch"``); then histogram equalisation of the content.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"lung_input expects a 2-D uint8 image, got {gray.dtype} {gray.shape}")
    work, scale = _downscale(gray, 4 * side)
    work, (top, left) = _trim_uniform_borders(work)
    h, w = work.shape
    H, W = gray.shape
    otop, oleft = round(top / scale), round(left / scale)
    obottom, oright = min(H, round((top + h) / scale)), min(W, round((left + w) / scale))
    if mode == "stretch":
        small = cv2.equalizeHist(cv2.resize(work, (side, side), interpolation=cv2.INTER_AREA))
        y0, x0, ch, cw = 0, 0, side, side
    elif mode == "letterbox":
        f = side / max(h, w)
        ch, cw = max(1, min(side, round(h * f))), max(1, min(side, round(w * f)))
        content = cv2.equalizeHist(cv2.resize(work, (cw, ch), interpolation=cv2.INTER_AREA))
        small = np.zeros((side, side), np.uint8)
        y0, x0 = (side - ch) // 2, (side - cw) // 2
        small[y0 : y0 + ch, x0 : x0 + cw] = content
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return small, Frame((H, W), otop, oleft, obottom, oright, y0, x0, ch, cw, side, mode)


def mask_to_original(
    prob_small: np.ndarray, frame: Frame, shape=None, threshold: float = THRESHOLD
) -> np.ndarray:
    """Small probability (or 0/1 mask) map -> uint8 0/255 mask of exactly the original height x width.

    The content region is resized (bilinear on the probabilities, then thresholded) onto the trimmed
    region of the original; the trimmed borders are 0.
    """
    shape = tuple(shape) if shape is not None else tuple(frame.shape)
    prob = np.asarray(prob_small, dtype=np.float32).reshape(frame.side, frame.side)
    content = prob[frame.y0 : frame.y0 + frame.ch, frame.x0 : frame.x0 + frame.cw]
    # scale the trimmed region if the caller asks for a different output size than the frame's
    sy, sx = shape[0] / frame.shape[0], shape[1] / frame.shape[1]
    top, bottom = round(frame.top * sy), round(frame.bottom * sy)
    left, right = round(frame.left * sx), round(frame.right * sx)
    out = np.zeros(shape, np.uint8)
    if bottom > top and right > left:
        big = cv2.resize(content, (right - left, bottom - top), interpolation=cv2.INTER_LINEAR)
        # 0/255 straight from the comparison: np.where made an int64 picture first (a third of the step)
        out[top:bottom, left:right] = (big >= threshold).view(np.uint8) * np.uint8(255)
    return out


# ---------------------------------------------------------------------------------- post-processing
MIN_COMPONENT_FRACTION = 0.005  # of the image: smaller blobs are noise


def mask_to_frame(mask: np.ndarray, frame: Frame, soft: bool = False) -> np.ndarray:
    """Original-size 0/255 mask -> 0/1 float mask in the model-input geometry (inverse of mask_to_original).

    ``soft`` keeps each small pixel's lung share (0..1) instead of rounding it: a network trained on it
    learns where inside a pixel the edge lies, and the bilinear way back to the film's size
    (:func:`mask_to_original`) puts the edge there. Rounded 64 px targets alone cap the full-size Dice
    at about 0.979 on the shared masks; their shares at 0.995 (0.988 and 0.998 at 128 px).
    """
    region = (mask[frame.top : frame.bottom, frame.left : frame.right] > 0).astype(np.float32)
    small = np.zeros((frame.side, frame.side), np.float32)
    content = cv2.resize(region, (frame.cw, frame.ch), interpolation=cv2.INTER_AREA)
    small[frame.y0 : frame.y0 + frame.ch, frame.x0 : frame.x0 + frame.cw] = (
        np.clip(content, 0.0, 1.0) if soft else (content >= 0.5).astype(np.float32)  # area sums round past 1
    )
    return small


def postprocess(mask: np.ndarray, keep: int = 2) -> np.ndarray:
    """Keep the ``keep`` largest connected components (ignoring specks), fill their holes. 0/255 out."""
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return np.zeros_like(binary)
    areas = stats[1:, cv2.CC_STAT_AREA]
    min_area = MIN_COMPONENT_FRACTION * binary.size
    order = [i + 1 for i in np.argsort(-areas)[:keep] if areas[i] >= min_area]
    out = np.zeros_like(binary)
    for lab in order:
        comp = (labels == lab).astype(np.uint8)
        contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)  # fills holes
    return out * 255


# Thresholds: see RESULTS.md. A first version also required the two lungs to be of similar size
# (smaller/larger >= 0.25) and area >= 0.08; on the 2,332 real X-rays every one of its 17 refusals was
# a TB image (destroyed / consolidated lung), so the gate now leans on the model's confidence instead
# and accepts one lung-sized region.
AREA_MIN, AREA_MAX = 0.04, 0.65  # lung area / analysed frame area (real X-rays: min 0.065, max 0.56)
CENTROID_MAX_Y = 0.70  # every lung centroid in the upper part of the frame (real X-rays: max 0.64)
MIN_TALLEST = 0.30  # the tallest region, fraction of frame height (real X-rays: min 0.34)
MIN_HEIGHT = 0.06  # every region (a fragment of a destroyed lung can be short; real X-rays: min 0.08)
SINGLE_OFF_CENTRE = 0.08  # a lone region must be a lung: centroid at least this far from the midline
MIN_CONFIDENCE = 0.85  # mean |2p-1| inside the lung fields (real X-rays: min 0.87)


def lung_features(mask: np.ndarray, prob: np.ndarray | None = None) -> dict:
    """Measurements of a (post-processed) lung mask that :func:`plausible_lungs` judges."""
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    H, W = binary.shape
    n, _, stats, cents = cv2.connectedComponentsWithStats(binary, connectivity=8)
    big = sorted(
        (i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= MIN_COMPONENT_FRACTION * binary.size),
        key=lambda i: cents[i][0],
    )
    areas = [int(stats[i, cv2.CC_STAT_AREA]) for i in big]
    f = {
        "area": float(binary.mean()),
        "regions": len(big),
        "ratio": float(min(areas) / max(areas)) if areas else 0.0,
        "centroid_x": [float(cents[i][0] / W) for i in big],
        "centroid_y": [float(cents[i][1] / H) for i in big],
        "height": [float(stats[i, cv2.CC_STAT_HEIGHT] / H) for i in big],
        "confidence": None,
    }
    if prob is not None:
        inside = np.asarray(prob, np.float32)[binary > 0]
        f["confidence"] = float(np.abs(2 * inside - 1).mean()) if inside.size else 0.0
    return f


def plausible_lungs(mask: np.ndarray, prob: np.ndarray | None = None) -> tuple[bool, str]:
    """Does ``mask`` (0/255, post-processed, any size; ideally the analysed frame) look like lungs?

    Total area a plausible fraction of the frame; one or two lung-sized regions (one lung can be
    wholly opacified in TB): two lying one left and one right of the centre, or one clearly off the
    midline; centroids in the upper 70 %; the tallest region at least 30 % of the height; with ``prob`` (the model's probabilities, same shape) the
    model must also be confident inside the fields. Returns (ok, reason).
    """
    f = lung_features(mask, prob)
    if f["area"] < AREA_MIN:
        return False, f"lung area {f['area']:.3f} of the frame is below {AREA_MIN}"
    if f["area"] > AREA_MAX:
        return False, f"lung area {f['area']:.3f} of the frame is above {AREA_MAX}"
    if f["regions"] not in (1, 2):
        return False, f"{f['regions']} lung-sized regions, expected 1 or 2"
    if f["regions"] == 2 and not (f["centroid_x"][0] < 0.5 < f["centroid_x"][1]):
        return False, "regions are not one left and one right of the centre"
    if f["regions"] == 1 and abs(f["centroid_x"][0] - 0.5) < SINGLE_OFF_CENTRE:
        return False, "single region in the middle, not a lung"
    if max(f["centroid_y"]) > CENTROID_MAX_Y:
        return False, f"region centroid at {max(f['centroid_y']):.2f} of the height, below {CENTROID_MAX_Y}"
    if max(f["height"]) < MIN_TALLEST or min(f["height"]) < MIN_HEIGHT:
        return False, f"regions too short ({max(f['height']):.2f}/{min(f['height']):.2f} of the height)"
    if f["confidence"] is not None and f["confidence"] < MIN_CONFIDENCE:
        return False, f"low segmentation confidence {f['confidence']:.2f}"
    return True, "ok"


def clean_probabilities(prob: np.ndarray, clean: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Apply a post-processed small mask to the probabilities, keeping their sub-pixel boundary.

    Inside kept regions (holes filled) the probability is raised to at least ``threshold``; a
    1-pixel ring around them keeps the raw probability (so bilinear up-sampling in
    :func:`mask_to_original` gives the same smooth edge as the raw map); everything else is 0.
    """
    keep = np.asarray(clean) > 0
    ring = cv2.dilate(keep.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    prob = np.asarray(prob, np.float32)
    return np.where(
        keep, np.maximum(prob, threshold), np.where(ring, np.minimum(prob, threshold - 1e-3), 0.0)
    ).astype(np.float32)


# ----------------------------------------------------------------------------------------- pipeline
_PREDICTORS: dict = {}


def make_predictor(model, jit_compile: bool = False):
    """A compiled batch-of-1 forward pass (a graph call is several times faster than eager ``model(x)``)."""
    import tensorflow as tf

    side = model.input_shape[1]
    fn = tf.function(
        lambda x: model(x, training=False),
        jit_compile=jit_compile,
        input_signature=[tf.TensorSpec((1, side, side, 1), tf.uint8)],
    )
    return lambda small: fn(small[None, :, :, None]).numpy()[0, :, :, 0]


def predict_small(model, small: np.ndarray) -> np.ndarray:
    """Model probabilities (side x side float32) for one side x side uint8 input, batch of 1."""
    key = id(model)
    if key not in _PREDICTORS:
        _PREDICTORS[key] = (model, make_predictor(model))  # keep model alive so id() stays unique
    return _PREDICTORS[key][1](np.ascontiguousarray(small, dtype=np.uint8))


def segment(model, gray: np.ndarray, side: int = SIDE, mode: str = "letterbox") -> dict:
    """Full path: lung_input -> predict -> postprocess -> mask_to_original -> plausibility, box, area."""
    return segment_with(lambda small: predict_small(model, small), gray, side, mode)


def segment_with(forward, gray: np.ndarray, side: int = SIDE, mode: str = "letterbox") -> dict:
    small, frame = lung_input(gray, side, mode)
    return segment_from(forward(small), frame, gray.shape)


def segment_from(prob: np.ndarray, frame: Frame, shape: tuple[int, int]) -> dict:
    """The steps after the network: clean the small mask, judge it, bring it back to the picture's size.

    Split from :func:`segment_with` so that a batch of films can share one forward pass (the network
    is most of the cost of a lung check) while each film's post-processing stays exactly the same.
    """
    clean_small = postprocess(prob >= THRESHOLD)
    # judge plausibility on the analysed content region (letterbox padding excluded)
    content = clean_small[frame.y0 : frame.y0 + frame.ch, frame.x0 : frame.x0 + frame.cw]
    cprob = prob[frame.y0 : frame.y0 + frame.ch, frame.x0 : frame.x0 + frame.cw]
    ok, reason = plausible_lungs(content, cprob)
    mask = mask_to_original(clean_probabilities(prob, clean_small), frame, shape)
    return {
        "mask": mask,
        "box": mask_box(mask),
        "area_fraction": float(content.mean() / 255.0),
        "ok": ok,
        "reason": reason,
    }


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a mask's non-zero pixels, end exclusive; zeros for an empty mask.

    From the rows and columns that hold any lung rather than from every lung pixel's coordinates:
    the same box for a fraction of the work on a full-size film.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if not rows.size:
        return (0, 0, 0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def make_batch_predictor(model, batch: int = 16):
    """A compiled forward pass over many inputs at once: about two thirds of the CPU time per film
    of batch-of-1 calls (measured on the shipped U-Net, 2 cores). One trace for any batch size.

    Calls of at most ``batch`` inputs: 16 cost the same CPU per film as 32 (6.5 ms) with half the
    activation memory (about 70 MB instead of 120 MB held by TensorFlow's allocator)."""
    import tensorflow as tf

    side = model.input_shape[1]
    fn = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, side, side, 1), tf.uint8)],
    )

    def forward(smalls: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [fn(smalls[i : i + batch, :, :, None]).numpy()[..., 0] for i in range(0, len(smalls), batch)]
        )

    return forward


class LungModel:
    """A registered lung model, loaded once per process, with its forward passes.

    Served by TFLite (XNNPACK) when the version carries a converted ``model.tflite`` (lung models
    trained since issue #23 do), else by Keras; ``CXR_LUNG_RUNTIME=keras`` forces Keras.
    """

    def __init__(self, model_dir: str | Path):
        import json

        from cxr_core.errors import ModelError
        from cxr_core.settings import Layout

        self.model_dir = Path(model_dir)
        self._model = None
        try:
            self.metadata = json.loads((self.model_dir / Layout.METADATA).read_text())
        except Exception as error:
            raise ModelError(f"the lung model in {self.model_dir} cannot be loaded: {error}") from error
        self.version = self.metadata.get("version") or self.model_dir.name
        self.sha256 = self.metadata.get("model_sha256")
        self.mode = self.metadata.get("mode", "letterbox")
        converted = self._converted() if os.environ.get("CXR_LUNG_RUNTIME", "tflite") == "tflite" else None
        if converted is not None:  # measured faster at every batch size, same masks (docs/performance.md)
            from cxr_core.modelling.runtime import TfliteLungForward

            # the Keras model is then loaded only if asked for (.model): a second of start-up saved
            self.runtime = "tflite"
            self.side = int(self.metadata.get("input_side") or 0) or int(self.model.input_shape[1])
            self._forward_many = TfliteLungForward(converted, self.side)
            self._forward = lambda small: self._forward_many(small[None])[0]
        else:
            self.runtime = "keras"
            self.side = int(self.model.input_shape[1])
            self._forward = make_predictor(self.model)
            self._forward_many = make_batch_predictor(self.model)

    @property
    def model(self):
        """The Keras network (loaded on first use when TFLite serves)."""
        if self._model is None:
            from cxr_core.errors import ModelError
            from cxr_core.settings import Layout

            try:
                self._model = load_model(self.model_dir / Layout.MODEL)
            except Exception as error:  # Keras raises many types for a damaged archive
                raise ModelError(f"the lung model in {self.model_dir} cannot be loaded: {error}") from error
        return self._model

    def _converted(self) -> bytes | None:
        """The model's TFLite twin (model.tflite, made from model.keras at training), if it has one."""
        from cxr_core.modelling.runtime import read_converted

        return read_converted(self.model_dir, self.metadata, "lung model")

    def segment(self, gray: np.ndarray) -> dict:
        """Mask at the picture's own size (0/255), its box, the share of the frame, and plausibility."""
        return segment_with(self._forward, gray, self.side, self.mode)

    def lung_input(self, gray: np.ndarray) -> tuple[np.ndarray, Frame]:
        """The network's input for one picture (the part of :meth:`segment` before the network)."""
        return lung_input(gray, self.side, self.mode)

    def probabilities(self, smalls: list[np.ndarray]) -> list[np.ndarray]:
        """The network on many inputs in one call; a lone input takes the batch-of-1 path of :meth:`segment`.

        Batched and batch-of-1 results differ in float rounding only (oneDNN picks other kernels for a
        batch of one): about 5e-6 in probability, one mask pixel at 128 px in 469 test films.
        """
        if len(smalls) == 1:
            return [self._forward(np.ascontiguousarray(smalls[0], dtype=np.uint8))]
        return list(self._forward_many(np.stack(smalls).astype(np.uint8, copy=False)))

    def segment_from(self, prob: np.ndarray, frame: Frame, gray: np.ndarray) -> dict:
        """:meth:`segment` for a picture whose network output is already known."""
        return segment_from(prob, frame, gray.shape)


# ------------------------------------------------------------------------------------------ metrics
def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(a, b).sum() / s)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)


_LOADED: dict[str, LungModel] = {}


def load_lung_model(version: str | None = None, expected_sha256: str | None = None) -> LungModel | None:
    """The lung model a classifier was trained with (``version``), else the current one; None if none.

    A recorded checksum must match: a classifier trained on lung-cropped films must see the same crop.
    Loaded once per process and version.
    """
    from cxr_core.errors import ModelError
    from cxr_core.registry.store import Registry
    from cxr_core.settings import lung_models_dir

    registry = Registry(lung_models_dir())
    if version is None:
        try:
            version = registry.current_version()
        except ModelError:
            version = None
        if version is None:
            return None
    if version not in _LOADED:
        registry.verify(version)
        _LOADED[version] = LungModel(registry.version_dir(version))
    model = _LOADED[version]
    if expected_sha256 and model.sha256 != expected_sha256:
        raise ModelError(
            f"lung model {version} is not the one the classifier was trained with (checksum differs)"
        )
    return model
