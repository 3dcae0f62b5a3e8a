"""What every decoder of the imaging package shares: the decoded picture, the limits, and pixel conversion.

Apart from :mod:`cxr_core.imaging.decode` (which recognises the bytes and reads the picture formats) and
:mod:`cxr_core.imaging.dicom` (which reads DICOM) so that both build on it and neither needs the
other's internals: ``decode`` calls ``dicom``, ``dicom`` never imports ``decode``. numpy and Pillow only.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from cxr_core.errors import ImageError

MAX_PIXELS = 64_000_000  # refuse before decoding anything larger (decompression bombs)
MIN_SIDE = 64  # smaller cannot be assessed
SMALL_SIDE = 256  # below this the model still runs but sees an upscaled, blurry image
# Colourfulness (see ``colourfulness``) above which a picture is taken for a colour photograph.
# Calibrated: radiographs saved as RGB or JPEG score 0.0; sepia/blue/green-tinted ones ~0.5; per-channel
# gamma casts ~10; heavy red/green annotations ~6; a film photographed on a lightbox with coloured
# room edges ~12. Colour photographs score 33-78 (a portrait ~48), and still ~24 at half saturation.
COLOURFULNESS_LIMIT = 20.0

# Everything Pillow, libtiff, zlib and pydicom are known to raise on hostile or damaged input. The
# list is broad on purpose: at this boundary any decoder failure means "this file is damaged".
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    EOFError,
    struct.error,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    AttributeError,
)


@dataclass
class DecodedImage:
    """A radiograph as the rest of the pipeline sees it, whatever file it came from.

    ``pixels`` is 2-D, C-contiguous, writeable uint8 in MONOCHROME2 sense (bone bright) at full
    resolution; ``width``/``height`` are its size after EXIF orientation. ``colourfulness`` is kept
    because the gray conversion destroys the evidence that the upload was a colour photograph.
    """

    pixels: np.ndarray
    format: str
    width: int
    height: int
    bit_depth: int
    warnings: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    colourfulness: float = 0.0

    def with_pixels(self, pixels: np.ndarray) -> DecodedImage:
        """The same film with other pixels (reframed, a strip added, upscaled), its size following them:
        what a robustness check sends down the serving path in place of the original."""
        return replace(self, pixels=pixels, height=pixels.shape[0], width=pixels.shape[1])


def colourfulness(rgb: np.ndarray) -> float:
    """Mean chroma of an RGB(A) array that no single colour tint explains; 0.0 for grayscale input.

    Chroma is measured on the Hasler-Suesstrunk opponent axes (R-G, (R+G)/2-B). Plain
    Hasler-Suesstrunk scores a sepia- or blue-tinted radiograph (a phone photo of a film on a
    lightbox, a monitor's colour cast) as high as a genuinely colourful photograph, so each channel
    is first fitted as an affine function of luminance and only the residual chroma counts: a tinted
    monochrome image then scores ~0, coloured annotations on a radiograph stay small (they cover few
    pixels), and a colour photograph keeps most of its chroma. Measured on a strided copy of at most
    ~256x256 pixels, which changes a global mean negligibly and keeps the cost size-independent.
    """
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        return 0.0
    step = max(1, math.ceil(max(rgb.shape[0], rgb.shape[1]) / 256))
    sub = rgb[::step, ::step, :3].reshape(-1, 3).astype(np.float32)
    if sub.shape[0] < 2:
        return 0.0
    luma = sub @ np.array([0.299, 0.587, 0.114], np.float32)
    centred_luma = luma - luma.mean()
    variance = float(centred_luma @ centred_luma)
    centred = sub - sub.mean(axis=0)
    slopes = (centred_luma @ centred) / variance if variance > 0 else np.zeros(3, np.float32)
    residual = centred - centred_luma[:, None] * slopes[None, :]
    red, green, blue = residual[:, 0], residual[:, 1], residual[:, 2]
    chroma = np.hypot(red - green, 0.5 * (red + green) - blue)
    return float(chroma.mean())


def _too_large(width: int, height: int) -> ImageError:
    return ImageError(
        f"image is {width}x{height} pixels, too large (limit {MAX_PIXELS // 1_000_000} megapixels)"
    )


def _rgb_image_to_gray(im: Image.Image) -> tuple[np.ndarray, int, float]:
    colour = colourfulness(np.asarray(im))
    return np.array(im.convert("L")), 8, colour


def _fits_uint16(arr: np.ndarray) -> bool:
    return arr.size == 0 or (int(arr.min()) >= 0 and int(arr.max()) <= 0xFFFF)


def _integer_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale 16-bit (or wider) integer pixels to 8 bits without inventing contrast.

    An 8-bit picture stored as 16 bits by ``x * 257`` comes back exactly; otherwise the scale is the
    smallest bit depth that holds the data (so 12-bit-in-16 detector output fills the range instead
    of decoding nearly black). Data outside 0..65535 (signed or 32-bit) is stretched min..max.
    """
    if arr.size == 0:
        return np.zeros(arr.shape, np.uint8)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 0xFFFF:
        return _stretch(arr, lo, hi)
    arr16 = arr.astype(np.uint16, copy=False)
    high = arr16 >> 8
    if np.array_equal(arr16 & 0xFF, high):
        return high.astype(np.uint8)
    bits = max(8, hi.bit_length())
    denom = (1 << bits) - 1
    return ((arr16.astype(np.uint32) * 255 + denom // 2) // denom).astype(np.uint8)


def _float_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Float images follow the same conventions as integers where one applies.

    0..1 is the usual float convention; non-negative whole ranges up to 65535 are integer data
    stored as float (treated exactly like ``_integer_to_uint8``); anything else (negative values,
    Hounsfield-like ranges) is stretched by its own range. NaN/inf become 0 rather than failing.
    """
    arr = np.nan_to_num(arr.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    if arr.size == 0:
        return np.zeros(arr.shape, np.uint8)
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.rint(arr * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 0xFFFF:
        return _integer_to_uint8(np.rint(arr).astype(np.uint16))
    return _stretch(arr, lo, hi)


def _stretch(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map lo..hi linearly onto 0..255 (a constant image maps to 0)."""
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    scaled = (arr.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)
