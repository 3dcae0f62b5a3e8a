"""Reading whatever a clinician uploads into one well-defined thing: a 2-D uint8 grayscale radiograph.

Uploads arrive with wrong or missing extensions (a DICOM called ``.png``, a PDF report called
``.jpg``), so the format is decided by the bytes, never by the name. Every way an upload can fail
becomes an :class:`~cxr_core.errors.ImageError` whose message can be shown as it is; a raw decoder
traceback tells a clinician nothing. Size limits are checked from the header before any pixel is
decoded, because a 200-byte PNG can declare a frame that would take gigabytes to hold.

This module must stay importable without TensorFlow or streamlit (the CLI and the ingest workers
use it), so pydicom is imported only when a DICOM file actually turns up.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
import zlib
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxr_core.errors import ImageError
from cxr_core.imaging.dicom import looks_like_raw_dicom, read_dicom
from cxr_core.imaging.pixels import (
    _DECODE_ERRORS,
    COLOURFULNESS_LIMIT,
    MAX_PIXELS,
    MIN_SIDE,
    SMALL_SIDE,
    DecodedImage,
    _fits_uint16,
    _float_to_uint8,
    _integer_to_uint8,
    _rgb_image_to_gray,
    _stretch,
    _too_large,
    colourfulness,
)

try:  # OpenCV decodes plain 8-bit grayscale PNG a little faster than Pillow; Pillow covers its absence.
    import cv2
except ImportError:  # pragma: no cover - opencv is a pinned dependency
    cv2 = None

__all__ = [
    "MAX_PIXELS",
    "MIN_SIDE",
    "SMALL_SIDE",
    "MAX_FILE_BYTES",
    "COLOURFULNESS_LIMIT",
    "BLANK_SPREAD",
    "DecodedImage",
    "read_image",
    "check_plausible_radiograph",
    "colourfulness",
]

# File endings taken as images when a folder is searched (DICOM files often have none at all).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"})
MAX_FILE_BYTES = 512 * 1024 * 1024  # no radiograph within MAX_PIXELS needs more; stops /dev/zero-like reads
# A frame whose 1st..99th percentile spread is below this many grey levels shows nothing to assess.
BLANK_SPREAD = 10

_PIL_FORMATS = {  # magic bytes -> the only Pillow plugin allowed to parse the file
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"II+\x00": "TIFF",  # BigTIFF
    b"MM\x00+": "TIFF",
}
_TRUNCATED = "image file is truncated or corrupt"


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def read_image(source: bytes | str | os.PathLike, *, include_identifiers: bool = False) -> DecodedImage:
    """Decode an upload (bytes, a path, or a binary file object) into a :class:`DecodedImage`.

    ``include_identifiers`` exists because DICOM headers carry the patient's name, ID and birth
    date; they are left out of ``metadata`` unless the caller explicitly needs them, so they do not
    leak into logs, prediction CSVs or screenshots by default.
    """
    data = _read_source(source)
    if not data:
        raise ImageError("empty file")

    if len(data) >= 132 and data[128:132] == b"DICM":
        image = read_dicom(data, include_identifiers, forced=False)
    elif (fmt := _pil_format(data)) is not None:
        image = _read_pil(data, fmt)
    elif looks_like_raw_dicom(data):
        image = read_dicom(data, include_identifiers, forced=True)
    else:
        raise ImageError(_not_an_image_message(data))

    small = _small_warning(image.width, image.height)
    if small and small not in image.warnings:
        image.warnings.append(small)
    return image


def check_plausible_radiograph(image: DecodedImage) -> None:
    """Refuse inputs that decode fine but cannot be chest X-rays, before a model scores them.

    A model happily returns a TB probability for a holiday photo or a black frame; that number
    would look authoritative on screen, so these are stopped here with a reason instead.
    """
    pixels = image.pixels
    height, width = pixels.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"image is {width}x{height} pixels, too small to assess")
    if _intensity_spread(pixels) < BLANK_SPREAD:
        raise ImageError("the image is blank or nearly uniform")
    if image.colourfulness > COLOURFULNESS_LIMIT:
        raise ImageError("this looks like a colour photograph, not an X-ray")
    small = _small_warning(width, height)
    if small and small not in image.warnings:
        image.warnings.append(small)


# --------------------------------------------------------------------------------------------------
# Getting the bytes
# --------------------------------------------------------------------------------------------------


def _read_source(source: Any) -> bytes:
    """All bytes of the upload; reading is bounded so a path to a device or a huge file cannot hang us."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = os.fsdecode(path)
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size > MAX_FILE_BYTES:  # refuse from the directory entry, without reading it
                    raise ImageError(_file_too_large())
                data = handle.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError as exc:
            raise ImageError(f"file not found: {name}") from exc
        except IsADirectoryError as exc:
            raise ImageError(f"{name} is a folder, not an image file") from exc
        except PermissionError as exc:
            raise ImageError(f"cannot open {name}: permission denied") from exc
        except OSError as exc:
            raise ImageError(f"cannot read {name}: {exc.strerror or exc}") from exc
    elif hasattr(source, "read"):  # e.g. an uploaded-file object
        try:
            data = source.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ImageError(f"the upload could not be read: {exc.strerror or exc}") from exc
        if isinstance(data, str):
            raise TypeError("read_image needs a binary file object, not a text one")
        data = bytes(data)
    else:
        raise TypeError(f"read_image takes bytes, a path or a binary file, not {type(source).__name__}")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(_file_too_large())
    return data


def _file_too_large() -> str:
    return f"file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB, too large for an X-ray"


# --------------------------------------------------------------------------------------------------
# Recognising what the bytes are
# --------------------------------------------------------------------------------------------------


def _pil_format(data: bytes) -> str | None:
    for magic, fmt in _PIL_FORMATS.items():
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _not_an_image_message(data: bytes) -> str:
    kind = _describe_non_image(data)
    if kind.startswith("unsupported:"):
        name = kind.split(":", 1)[1]
        return f"unsupported image format ({name}); please export it as PNG, JPEG or DICOM"
    return f"not an image (looks like {kind})"


def _describe_non_image(data: bytes) -> str:
    """A name a clinician recognises for what was uploaded instead of an image."""
    head = data[:8192]
    if head.startswith(b"%PDF") or b"%PDF-" in head[:1024]:
        return "a PDF document"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "a ZIP archive or Office document"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip-compressed file"
    if head.startswith(b"Rar!\x1a\x07") or head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "a compressed archive"
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "a Microsoft Office document"
    if head.startswith(b"{\\rtf"):
        return "a Word (RTF) document"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "unsupported:HEIC photo"
        if brand in (b"avif", b"avis"):
            return "unsupported:AVIF"
        return "a video file"
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xff\x4f\xff\x51"):
        return "unsupported:JPEG 2000"
    text = _as_text(head)
    if text is not None:
        lowered = text.lstrip().lower()
        if "<svg" in lowered:
            return "an SVG drawing"
        if lowered.startswith(("<!doctype html", "<html")) or "<html" in lowered[:1024]:
            return "a web page (HTML)"
        if lowered.startswith("<?xml"):
            return "an XML document"
        if lowered.startswith(("{", "[")):
            return "a JSON or text file"
        return "a text file"
    return "an unrecognised file format"


def _as_text(head: bytes) -> str | None:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return head.decode("utf-16")
        except UnicodeDecodeError:
            return None
    if b"\x00" in head:
        return None
    text = head.decode("utf-8", errors="replace")
    bad = sum(1 for ch in text if ch == "\ufffd" or (ord(ch) < 32 and ch not in "\t\n\r\f"))
    return text if bad <= 0.02 * max(1, len(text)) + 1 else None


# --------------------------------------------------------------------------------------------------
# Pillow formats
# --------------------------------------------------------------------------------------------------


def _read_pil(data: bytes, fmt: str) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning fires above ~89 MP; we refuse at MAX_PIXELS ourselves below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        size = _header_size(data, fmt)
        if size is None:
            raise ImageError(f"image is too large (limit {MAX_PIXELS // 1_000_000} megapixels)") from exc
        raise _too_large(*size) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(_corrupt_or_not_image(data)) from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(_corrupt_or_not_image(data)) from exc

    with im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise ImageError(_TRUNCATED)
        if width * height > MAX_PIXELS:
            raise _too_large(width, height)
        chunks: set[bytes] = set()
        if fmt == "PNG":
            chunks, idat = _verify_png(data)
            if not _png_for_cv2(data, chunks) and not _png_has_all_rows(data, idat):
                raise ImageError(_TRUNCATED)
        try:
            return _decode_pil(im, data, fmt, chunks)
        except Image.DecompressionBombError as exc:
            raise _too_large(width, height) from exc
        except MemoryError as exc:
            raise ImageError("image is too large to decode on this machine") from exc
        except _DECODE_ERRORS as exc:
            raise ImageError(_pil_failure_message(exc)) from exc


def _corrupt_or_not_image(data: bytes) -> str:
    """A header that fails to parse: a damaged image, unless it was text that happens to start 'BM'."""
    kind = _describe_non_image(data)
    if kind in ("a text file", "a JSON or text file", "a web page (HTML)", "an XML document"):
        return f"not an image (looks like {kind})"
    return _TRUNCATED


def _pil_failure_message(exc: BaseException) -> str:
    text = str(exc).lower()
    if "decoder" in text and ("not available" in text or "unknown" in text):
        return "this image uses an encoding that this installation cannot decode"
    return _TRUNCATED


def _header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Declared size of an image Pillow refused as a bomb, so the message can say how big it is.

    Pillow's plugin factories parse only the header, and calling one directly skips the bomb check
    inside ``Image.open`` that raised in the first place.
    """
    try:
        factory, _accept = Image.OPEN[fmt]
        with factory(io.BytesIO(data), "") as im:
            return im.size
    except Exception:  # any failure just means the message cannot include the size
        return None


def _verify_png(data: bytes) -> tuple[set[bytes], list[memoryview]]:
    """Walk the PNG chunks, checking lengths and the CRC of every critical chunk.

    Pillow decodes a PNG that lost its tail (or whose IDAT CRC is wrong) without complaint as long
    as the compressed stream happens to be complete; a transfer error must not pass for a clean
    image. Returns the chunk types seen (so the caller knows about transparency and EXIF) and the
    IDAT payloads.
    """
    seen: set[bytes] = set()
    idat: list[memoryview] = []
    view = memoryview(data)
    pos = 8
    end = len(data)
    while True:
        if pos + 12 > end:
            raise ImageError(_TRUNCATED)
        length, ctype = struct.unpack_from(">I4s", data, pos)
        stop = pos + 8 + length
        if stop + 4 > end:
            raise ImageError(_TRUNCATED)
        if ctype[:1].isupper():  # critical chunk (IHDR, PLTE, IDAT, IEND): CRC must match
            (crc,) = struct.unpack_from(">I", data, stop)
            if zlib.crc32(view[pos + 4 : stop]) != crc:
                raise ImageError(_TRUNCATED)
        if ctype == b"IDAT":
            idat.append(view[pos + 8 : stop])
        seen.add(ctype)
        if ctype == b"IEND":
            if not idat:
                raise ImageError(_TRUNCATED)
            return seen, idat
        pos = stop + 4


def _png_has_all_rows(data: bytes, idat: list[memoryview]) -> bool:
    """Whether the IDAT stream inflates to every row the header promises.

    Pillow fills the missing rows of a PNG whose compressed stream ends early with black and says
    nothing; the stream is inflated here in bounded pieces (output discarded) to catch that.
    """
    width, height, depth, colour_type, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour_type)
    if channels is None:
        return False

    def row_bytes(w: int) -> int:
        return 1 + (w * channels * depth + 7) // 8

    if interlace:
        passes = (
            (0, 0, 8, 8),
            (4, 0, 8, 8),
            (0, 4, 4, 8),
            (2, 0, 4, 4),
            (0, 2, 2, 4),
            (1, 0, 2, 2),
            (0, 1, 1, 2),
        )
        expected = 0
        for x0, y0, dx, dy in passes:
            pass_w, pass_h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
            if pass_w > 0 and pass_h > 0:
                expected += pass_h * row_bytes(pass_w)
    else:
        expected = height * row_bytes(width)

    inflater = zlib.decompressobj()
    produced = 0
    try:
        for payload in idat:
            pending = bytes(payload)
            while pending and produced < expected:
                produced += len(inflater.decompress(pending, 1 << 22))
                pending = inflater.unconsumed_tail
            if produced >= expected:
                return True
    except zlib.error:
        return False
    return produced >= expected


def _decode_pil(im: Image.ImageFile.ImageFile, data: bytes, fmt: str, chunks: set[bytes]) -> DecodedImage:
    fmt_name = "JPEG" if (im.format or fmt) == "MPO" else (im.format or fmt)
    mode = im.mode
    warnings_: list[str] = []
    metadata: dict[str, Any] = {"mode": mode}

    if getattr(im, "is_animated", False) or getattr(im, "n_frames", 1) > 1:
        warnings_.append("the file holds several images; only the first one was read")

    # Fast path: gray (8 or 16 bit) and 8-bit RGB PNG, what almost every radiograph export is, decoded
    # once by libpng. libpng (unlike Pillow) refuses a stream with missing rows, so the row check that
    # Pillow needs (a second inflate of the whole stream) is skipped, and a failure here is final.
    if fmt == "PNG" and _png_for_cv2(data, chunks):
        decoded = _cv2_decode_png(data)
        bit_depth = data[24]
        want = im.size[::-1] if data[25] == 0 else (*im.size[::-1], 3)
        if (
            decoded is None
            or decoded.shape != want
            or decoded.dtype != (np.uint8 if bit_depth == 8 else np.uint16)
        ):
            raise ImageError(_TRUNCATED)
        colour = 0.0
        if decoded.ndim == 3:  # the same RGB Pillow would give, turned gray the way Pillow does it
            decoded, _, colour = _rgb_image_to_gray(Image.fromarray(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)))
        elif bit_depth == 16:
            decoded = _integer_to_uint8(decoded)
        return DecodedImage(decoded, fmt_name, im.size[0], im.size[1], bit_depth, warnings_, metadata, colour)

    im.load()
    orientation = _exif_orientation(im)
    if orientation in range(2, 9):
        im = ImageOps.exif_transpose(im)
        metadata["exif_orientation"] = orientation

    pixels, bit_depth, colour = _pil_to_gray(im)
    height, width = pixels.shape
    return DecodedImage(pixels, fmt_name, width, height, bit_depth, warnings_, metadata, colour)


def _png_for_cv2(data: bytes, chunks: set[bytes]) -> bool:
    """Gray 8/16-bit or RGB 8-bit without transparency or EXIF: where OpenCV and Pillow give identical pixels.

    Neither applies gamma, chromaticities or an ICC profile on load (checked: identical pixels with
    gAMA, sRGB, sBIT and cHRM chunks). Pillow also reads an EXIF orientation from a "Raw profile type
    exif" text chunk, so a file that mentions one anywhere takes Pillow's path.
    """
    bit_depth, colour_type = data[24], data[25]
    return (
        cv2 is not None
        and ((colour_type == 0 and bit_depth in (8, 16)) or (colour_type == 2 and bit_depth == 8))
        and b"tRNS" not in chunks
        and b"eXIf" not in chunks
        and b"Raw profile type exif" not in data
    )


def _cv2_decode_png(data: bytes) -> np.ndarray | None:
    """libpng via OpenCV: ~25% faster than Pillow here, and it rejects streams with missing rows."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # a malformed EXIF block must not make a readable image unreadable
        return 1


def _pil_to_gray(im: Image.Image) -> tuple[np.ndarray, int, float]:
    """(gray uint8, bit depth, colourfulness) for any Pillow mode.

    Transparency is composited on black: a radiograph's surround is dark, and a transparent margin
    shown as white would read as an overexposed border.
    """
    mode = im.mode
    if mode == "L":
        return np.array(im), 8, 0.0
    if mode == "1":
        return np.array(im.convert("L")), 1, 0.0
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im)
        return _integer_to_uint8(arr), 16 if arr.dtype.itemsize <= 2 or _fits_uint16(arr) else 32, 0.0
    if mode == "F":
        return _float_to_uint8(np.asarray(im)), 32, 0.0
    if mode in ("LA", "La"):
        arr = np.asarray(im.convert("LA"))
        gray, alpha = arr[..., 0], arr[..., 1]
        if alpha.min() == 255:
            return np.ascontiguousarray(gray), 8, 0.0
        return ((gray.astype(np.uint16) * alpha + 127) // 255).astype(np.uint8), 8, 0.0
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa"):
        if im.mode == "RGBa":
            im = im.convert("RGBA")
        if im.getchannel("A").getextrema()[0] < 255:
            im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im)
        im = im.convert("RGB")
    elif im.mode != "RGB":  # CMYK, YCbCr, LAB, HSV, RGBX, ...
        im = im.convert("RGB")
    return _rgb_image_to_gray(im)


# --------------------------------------------------------------------------------------------------
# Plausibility helpers
# --------------------------------------------------------------------------------------------------


def _small_warning(width: int, height: int) -> str | None:
    if MIN_SIDE <= min(width, height) < SMALL_SIDE:
        return f"small image: {width}x{height}, result less reliable"
    return None


def _intensity_spread(pixels: np.ndarray) -> int:
    """Grey levels between the 1st and 99th percentile, from a histogram of a strided copy.

    Percentiles rather than the standard deviation: a black frame with a few lines of burnt-in
    text has a sizeable std but still shows nothing to assess.
    """
    step = max(1, math.ceil(max(pixels.shape[:2]) / 256))
    sub = pixels[::step, ::step]
    if sub.dtype != np.uint8:
        sub = _stretch(sub, float(sub.min()), float(sub.max())) if sub.size else sub.astype(np.uint8)
    if cv2 is not None and sub.ndim == 2 and 0 < sub.size < 1 << 24:
        # The same counts as np.bincount (exact in float32 below 2**24), without its int64 copy.
        hist = cv2.calcHist([np.ascontiguousarray(sub)], [0], None, [256], [0, 256])
        counts = hist.ravel().astype(np.int64)
    else:
        counts = np.bincount(sub.ravel(), minlength=256)
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1])
    if total == 0:
        return 0
    low = int(np.searchsorted(cumulative, 0.01 * total))
    high = int(np.searchsorted(cumulative, 0.99 * total))
    return high - low
