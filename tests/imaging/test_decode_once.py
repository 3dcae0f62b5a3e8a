"""Each file is decoded once: integrity and pixels come from the same libpng pass where OpenCV agrees with Pillow."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cxr_core.errors import ImageError
from cxr_core.imaging import decode
from cxr_core.imaging.decode import read_image


def _film(height: int = 300, width: int = 260) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return (60 + 120 * np.exp(-(((yy - 150) / 110.0) ** 2 + ((xx - 130) / 90.0) ** 2)) + (xx % 7)).astype(
        np.uint8
    )


def _png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _rows_missing(width: int, height: int, depth: int, colour_type: int) -> bytes:
    """A PNG whose compressed stream is complete and CRC-correct but holds only 4 of its rows."""
    channels = {0: 1, 2: 3}[colour_type]
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    rows = zlib.compress(bytes((1 + width * channels * depth // 8) * 4))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


GRAY = _film()
ONE_PASS = {
    "gray-8": (lambda: _png(Image.fromarray(GRAY)), GRAY, 0.0),
    "gray-16": (lambda: _png(Image.fromarray(GRAY.astype(np.uint16) * 257)), GRAY, 0.0),
    "rgb-8": (lambda: _png(Image.fromarray(np.dstack([GRAY] * 3))), GRAY, 0.0),
}


@pytest.fixture
def passes(monkeypatch):
    """Counts the libpng decodes and Pillow's separate row-completeness inflate."""
    counts = {"libpng": 0, "row_check": 0}
    real_decode, real_rows = decode._cv2_decode_png, decode._png_has_all_rows

    def counted_decode(data):
        counts["libpng"] += 1
        return real_decode(data)

    def counted_rows(data, idat):
        counts["row_check"] += 1
        return real_rows(data, idat)

    monkeypatch.setattr(decode, "_cv2_decode_png", counted_decode)
    monkeypatch.setattr(decode, "_png_has_all_rows", counted_rows)
    return counts


@pytest.mark.parametrize("kind", ONE_PASS)
def test_plain_pngs_are_inflated_once_and_give_pillows_pixels(kind, passes):
    build, expected, colour = ONE_PASS[kind]
    data = build()
    image = read_image(data)
    assert passes == {"libpng": 1, "row_check": 0}
    np.testing.assert_array_equal(image.pixels, expected)
    # exactly what Pillow's own decode would have produced through the slower path
    with Image.open(io.BytesIO(data)) as im:
        slow = decode._pil_to_gray(im)
    np.testing.assert_array_equal(image.pixels, slow[0])
    assert (image.bit_depth, image.colourfulness) == (slow[1], colour)
    assert image.pixels.flags.c_contiguous and image.pixels.flags.writeable


def test_a_colour_rgb_png_keeps_its_colourfulness_through_the_fast_path(passes):
    rgb = np.dstack([GRAY, np.roll(GRAY, 40, axis=1), 255 - GRAY])
    image = read_image(_png(Image.fromarray(rgb)))
    assert passes["libpng"] == 1
    assert image.colourfulness == pytest.approx(decode.colourfulness(rgb))


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("gray-8", _rows_missing(256, 256, 8, 0)),
        ("gray-16", _rows_missing(256, 256, 16, 0)),
        ("rgb-8", _rows_missing(256, 256, 8, 2)),
        ("gray-16-cut", ONE_PASS["gray-16"][0]()[:-200]),
        ("rgb-8-cut", ONE_PASS["rgb-8"][0]()[:-200]),
    ],
)
def test_damaged_pngs_on_the_one_pass_path_still_say_so(kind, data):
    with pytest.raises(ImageError, match="^image file is truncated or corrupt$"):
        read_image(data)


def test_pngs_opencv_might_read_differently_take_pillows_path(passes):
    gray = Image.fromarray(GRAY)
    transparent = _png(gray.convert("LA"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: Pillow applies it, OpenCV would not
    rotated = _png(gray, exif=exif.tobytes())
    for data in (transparent, rotated):
        read_image(data)
    assert passes["libpng"] == 0 and passes["row_check"] == 2
    assert read_image(rotated).pixels.shape == GRAY.shape[::-1]
