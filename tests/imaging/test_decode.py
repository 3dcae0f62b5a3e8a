"""Reading uploads by content: every supported encoding of a real radiograph decodes to the same gray
picture, and every way an upload can be wrong ends in an ImageError a clinician can read.

All files are built inside the tests from a real X-ray (no binary fixtures in the repository), in the
table-driven style of TorchXRayVision's dataset tests: one row per (builder, expectation).
"""

import csv
import io
import os
import re
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from builders import (
    SVG,
    _corrupt_idat_data_keep_crc,
    _gray_palette_image,
    _idat_span,
    _png_chunk,
    _rgb,
    _save,
    _synthetic_photo,
    _zip_bytes,
    make_dicom,
)
from PIL import Image, ImageDraw, ImageFile
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.pixels import compress, get_decoder
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from cxr_core.errors import ImageError
from cxr_core.imaging.decode import (
    COLOURFULNESS_LIMIT,
    MAX_PIXELS,
    MIN_SIDE,
    DecodedImage,
    check_plausible_radiograph,
    colourfulness,
    read_image,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------
# Fixtures and builders
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xray(real_xray_path) -> np.ndarray:
    """The real TBX11K radiograph as stored: 512x512 uint8."""
    pixels = np.array(Image.open(real_xray_path))
    assert pixels.dtype == np.uint8 and pixels.ndim == 2
    return pixels


def _stretch(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    return np.rint((values - values.min()) * 255.0 / (values.max() - values.min())).astype(np.uint8)


def _twelve_bit(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.uint16) * 16 + 7).clip(0, 4095)


# (id, builder(x) -> bytes, expected format, expected bit depth, expected(x) -> uint8, max mean abs diff)
ENCODINGS = [
    ("png-8bit", lambda x: _save(Image.fromarray(x), "PNG"), "PNG", 8, None, 0.0),
    (
        "png-16bit-x257",
        lambda x: _save(Image.fromarray(x.astype(np.uint16) * 257), "PNG"),
        "PNG",
        16,
        None,
        0.0,
    ),
    (
        # a dark 8-bit picture lifted by *257 never reaches the top bit; it must still come back exact
        "png-16bit-x257-dark",
        lambda x: _save(Image.fromarray((x // 3).astype(np.uint16) * 257), "PNG"),
        "PNG",
        16,
        lambda x: x // 3,
        0.0,
    ),
    (
        # 12-bit detector data in a 16-bit container must fill the range, not decode nearly black
        "png-16bit-12bit-data",
        lambda x: _save(Image.fromarray(_twelve_bit(x)), "PNG"),
        "PNG",
        16,
        lambda x: np.rint(_twelve_bit(x) * 255.0 / 4095.0).astype(np.uint8),
        0.01,
    ),
    ("png-palette", lambda x: _save(_gray_palette_image(x), "PNG"), "PNG", 8, None, 0.0),
    ("png-rgb", lambda x: _save(_rgb(x), "PNG"), "PNG", 8, None, 0.0),
    ("png-rgba-opaque", lambda x: _save(_rgb(x).convert("RGBA"), "PNG"), "PNG", 8, None, 0.0),
    ("png-la-opaque", lambda x: _save(Image.fromarray(x).convert("LA"), "PNG"), "PNG", 8, None, 0.0),
    ("png-interlaced", lambda x: _save(Image.fromarray(x), "PNG", interlace=1), "PNG", 8, None, 0.0),
    ("jpeg-baseline-gray", lambda x: _save(Image.fromarray(x), "JPEG", quality=95), "JPEG", 8, None, 1.5),
    (
        "jpeg-progressive-rgb",
        lambda x: _save(_rgb(x), "JPEG", quality=95, progressive=True),
        "JPEG",
        8,
        None,
        1.5,
    ),
    ("jpeg-cmyk", lambda x: _save(_rgb(x).convert("CMYK"), "JPEG", quality=95), "JPEG", 8, None, 2.5),
    ("bmp-8bit", lambda x: _save(Image.fromarray(x), "BMP"), "BMP", 8, None, 0.0),
    ("bmp-rgb", lambda x: _save(_rgb(x), "BMP"), "BMP", 8, None, 0.0),
    ("tiff-8bit", lambda x: _save(Image.fromarray(x), "TIFF"), "TIFF", 8, None, 0.0),
    (
        "tiff-16bit-x257-deflate",
        lambda x: _save(Image.fromarray(x.astype(np.uint16) * 257), "TIFF", compression="tiff_adobe_deflate"),
        "TIFF",
        16,
        None,
        0.0,
    ),
    ("tiff-rgb-lzw", lambda x: _save(_rgb(x), "TIFF", compression="tiff_lzw"), "TIFF", 8, None, 0.0),
    (
        "tiff-float-0-1",
        lambda x: _save(Image.fromarray(x.astype(np.float32) / 255.0), "TIFF"),
        "TIFF",
        32,
        None,
        0.0,
    ),
    (
        # integer data stored as float keeps its meaning (here 8-bit values, so no stretching)
        "tiff-float-0-255",
        lambda x: _save(Image.fromarray(x.astype(np.float32) // 2), "TIFF"),
        "TIFF",
        32,
        lambda x: x // 2,
        0.0,
    ),
    (
        # signed 32-bit values outside any unsigned convention: stretched by their own range
        "tiff-int32-signed",
        lambda x: _save(Image.fromarray(x.astype(np.int32) * 1000 - 70_000), "TIFF"),
        "TIFF",
        32,
        _stretch,
        0.01,
    ),
    ("webp-lossless", lambda x: _save(_rgb(x), "WEBP", lossless=True), "WEBP", 8, None, 0.0),
    ("webp-lossy", lambda x: _save(_rgb(x), "WEBP", quality=95), "WEBP", 8, None, 2.5),
    ("gif", lambda x: _save(_gray_palette_image(x), "GIF"), "GIF", 8, None, 0.0),
]


@pytest.mark.parametrize(
    ("builder", "fmt", "bit_depth", "expected", "tolerance"),
    [pytest.param(*row[1:], id=row[0]) for row in ENCODINGS],
)
def test_every_encoding_of_a_real_xray_decodes_to_the_same_gray_picture(
    xray, builder, fmt, bit_depth, expected, tolerance
):
    image = read_image(builder(xray))
    want = xray if expected is None else expected(xray)

    assert isinstance(image, DecodedImage)
    assert image.format == fmt
    assert image.bit_depth == bit_depth
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == xray.shape
    assert image.pixels.flags.c_contiguous and image.pixels.flags.writeable
    assert (image.width, image.height) == (xray.shape[1], xray.shape[0])
    diff = np.abs(image.pixels.astype(np.int16) - want.astype(np.int16)).mean()
    assert diff <= tolerance, f"mean abs diff {diff:.3f} > {tolerance}"
    assert image.colourfulness < 1.0  # gray content, whatever container it came in
    assert image.warnings == []


def test_format_is_decided_by_content_not_by_file_name(tmp_path, xray):
    png_named_jpg = tmp_path / "scan.jpg"
    png_named_jpg.write_bytes(_save(Image.fromarray(xray), "PNG"))
    jpeg_named_png = tmp_path / "scan.png"
    jpeg_named_png.write_bytes(_save(Image.fromarray(xray), "JPEG", quality=95))
    no_extension = tmp_path / "scan"
    no_extension.write_bytes(_save(Image.fromarray(xray), "BMP"))

    assert read_image(png_named_jpg).format == "PNG"
    assert read_image(jpeg_named_png).format == "JPEG"
    assert read_image(str(no_extension)).format == "BMP"


def test_path_bytes_and_file_object_give_identical_pixels(tmp_path, real_xray_path):
    data = real_xray_path.read_bytes()
    copy = tmp_path / "copy.png"
    copy.write_bytes(data)
    reference = np.array(Image.open(real_xray_path))

    for source in (real_xray_path, str(copy), data, bytearray(data), io.BytesIO(data)):
        assert np.array_equal(read_image(source).pixels, reference)


def test_exif_orientation_is_applied(xray):
    stored = xray[:, :300]  # 512 high, 300 wide, so a rotation is visible in the shape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image = read_image(_save(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes()))

    assert image.pixels.shape == (300, 512)
    assert (image.width, image.height) == (512, 300)
    assert image.metadata.get("exif_orientation") == 6
    diff = np.abs(image.pixels.astype(np.int16) - np.rot90(stored, k=-1).astype(np.int16)).mean()
    assert diff < 1.5


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_regions_are_composited_on_black(xray, mode):
    base = _rgb(xray).convert("RGBA") if mode == "RGBA" else Image.fromarray(xray).convert("LA")
    arr = np.array(base)
    arr[:, :256, :-1] = 255  # white colour under the transparent half must not show
    arr[:, :256, -1] = 0
    image = read_image(_save(Image.fromarray(arr), "PNG"))

    assert image.pixels.ndim == 2
    assert image.pixels[:, :256].max() == 0
    assert np.array_equal(image.pixels[:, 256:], xray[:, 256:])


def test_palette_with_transparency_is_composited_on_black(xray):
    im = _gray_palette_image(xray)
    im.info["transparency"] = int(xray[0, 0])
    image = read_image(_save(im, "PNG", transparency=int(xray[0, 0])))
    transparent = xray == xray[0, 0]

    assert image.pixels[transparent].max() == 0
    assert np.array_equal(image.pixels[~transparent], xray[~transparent])


def test_multi_page_tiff_reads_the_first_page_and_says_so(xray):
    first, second = Image.fromarray(xray), Image.fromarray(255 - xray)
    image = read_image(_save(first, "TIFF", save_all=True, append_images=[second]))

    assert np.array_equal(image.pixels, xray)
    assert any("first" in w for w in image.warnings)


# ------------------------------------------------------------------------------------------------
# DICOM
# ------------------------------------------------------------------------------------------------


def _window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 LINEAR window, written out independently of pydicom."""
    scaled = ((values - (centre - 0.5)) / (width - 1) + 0.5).clip(0.0, 1.0)
    return np.rint(scaled * 255.0).astype(np.uint8)


@pytest.fixture(scope="module")
def stored12(xray) -> np.ndarray:
    return xray.astype(np.uint16) * 16  # 12-bit detector values, 0..4080


def test_dicom_monochrome2_applies_rescale_and_window(stored12, xray):
    centre, width = 1024.0, 4096.0
    image = read_image(make_dicom(stored12, slope=1, intercept=-1024, window=(centre, width)))

    assert image.format == "DICOM"
    assert image.bit_depth == 12
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == xray.shape
    assert np.abs(image.pixels.astype(np.int16) - xray.astype(np.int16)).mean() < 1.0
    assert image.metadata["Modality"] == "DX"
    assert image.metadata["PhotometricInterpretation"] == "MONOCHROME2"
    assert image.metadata["ViewPosition"] == "PA"
    assert image.metadata["BodyPartExamined"] == "CHEST"
    assert image.metadata["BitsStored"] == 12
    assert (image.metadata["WindowCenter"], image.metadata["WindowWidth"]) == (centre, width)


def test_dicom_narrow_window_is_really_applied(stored12):
    """A soft-tissue window saturates the bright half; min-max scaling would not."""
    slope, intercept, centre, width = 2.0, -1000.0, 2000.0, 1500.0
    image = read_image(make_dicom(stored12, slope=slope, intercept=intercept, window=(centre, width)))
    expected = _window(stored12 * slope + intercept, centre, width)

    assert np.abs(image.pixels.astype(np.int16) - expected.astype(np.int16)).max() <= 1
    assert (image.pixels == 255).mean() > 0.2


def test_dicom_without_window_is_scaled_by_its_own_range(stored12):
    image = read_image(make_dicom(stored12 // 2 + 300))  # no window: the data's own min..max

    assert np.abs(image.pixels.astype(np.int16) - _stretch(stored12 // 2).astype(np.int16)).max() <= 1


def test_dicom_voi_lut_sequence_is_applied(stored12):
    """A non-linear VOI LUT (square root): the output must follow the LUT, not a linear scale."""
    data = make_dicom(stored12)
    ds = dcmread(io.BytesIO(data))
    lut = np.rint(np.sqrt(np.arange(4096) / 4095.0) * 4095.0).astype(np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 12])  # LUT Descriptor: entries, first value, bits
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    ds.VOILUTSequence = [item]
    buffer = io.BytesIO()
    ds.save_as(buffer)

    image = read_image(buffer.getvalue())
    expected = _stretch(lut[stored12])
    assert image.metadata["voi"] == "LUT"
    assert np.abs(image.pixels.astype(np.int16) - expected.astype(np.int16)).max() <= 1
    assert np.abs(image.pixels.astype(np.int16) - _stretch(stored12).astype(np.int16)).mean() > 10


def test_dicom_unusable_window_falls_back_to_the_data_range(stored12):
    image = read_image(make_dicom(stored12, window=(1024.0, 0.0)))  # LINEAR needs width >= 1
    assert np.abs(image.pixels.astype(np.int16) - _stretch(stored12).astype(np.int16)).max() <= 1
    assert "min-max" in image.metadata["voi"]


def test_dicom_monochrome1_decodes_like_monochrome2(stored12):
    mono2 = read_image(make_dicom(stored12, slope=1, intercept=-1024, window=(1024.0, 4096.0)))
    # Same anatomy stored inverted; the mirrored window (2048 - c) is again centred at 1024.
    inverted = 4095 - stored12
    mono1 = read_image(
        make_dicom(inverted, photometric="MONOCHROME1", slope=1, intercept=-1024, window=(1024.0, 4096.0))
    )

    assert mono1.metadata["PhotometricInterpretation"] == "MONOCHROME1"
    assert np.abs(mono1.pixels.astype(np.int16) - mono2.pixels.astype(np.int16)).mean() < 1.0
    # bone stays bright: inverted storage without the flip would anti-correlate
    assert np.corrcoef(mono1.pixels.ravel(), mono2.pixels.ravel())[0, 1] > 0.99


def test_dicom_identifiers_only_on_request(stored12):
    data = make_dicom(stored12)
    plain = read_image(data)
    identified = read_image(data, include_identifiers=True)

    for key in ("PatientName", "PatientID", "PatientBirthDate"):
        assert key not in plain.metadata
    assert "Doe" not in repr(plain.metadata) and "MRN-0042" not in repr(plain.metadata)
    assert identified.metadata["PatientName"] == "Doe^Jane"
    assert identified.metadata["PatientID"] == "MRN-0042"
    assert identified.metadata["PatientBirthDate"] == "19700101"


def test_dicom_multi_frame_reads_first_frame(stored12, xray):
    both = np.stack([stored12, 4080 - stored12])
    image = read_image(make_dicom(both, frames=2))

    assert image.pixels.shape == xray.shape
    assert np.abs(image.pixels.astype(np.int16) - _stretch(stored12).astype(np.int16)).max() <= 1
    assert any("2 frames" in w for w in image.warnings)


def test_colour_dicom_becomes_gray_with_its_colourfulness(xray):
    gray_rgb = np.repeat(xray[..., None], 3, axis=2)
    image = read_image(make_dicom(gray_rgb, photometric="RGB", bits_stored=8, bits_allocated=8, samples=3))

    assert image.pixels.shape == xray.shape
    assert np.array_equal(image.pixels, xray)
    assert image.colourfulness == 0.0


def test_dicom_jpeg_baseline_and_rle_compressed_decode(xray):
    jpeg = _save(Image.fromarray(xray), "JPEG", quality=95)
    from_jpeg = read_image(
        make_dicom(
            xray,
            bits_stored=8,
            bits_allocated=8,
            transfer_syntax=JPEGBaseline8Bit,
            pixel_data=encapsulate([jpeg]),
        )
    )
    ds = Dataset()
    ds.Rows, ds.Columns = xray.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 1, 16, 12, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    rle = compress(ds, RLELossless, xray.astype(np.uint16) * 16)
    from_rle = read_image(make_dicom(xray, transfer_syntax=RLELossless, pixel_data=rle.PixelData))

    assert np.abs(from_jpeg.pixels.astype(np.int16) - _stretch(xray).astype(np.int16)).mean() < 2.0
    assert np.abs(from_rle.pixels.astype(np.int16) - _stretch(xray).astype(np.int16)).max() <= 1
    assert "JPEG Baseline" in from_jpeg.metadata["TransferSyntax"]


def test_dicom_without_preamble_is_recognised(stored12):
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "CR"
    ds.Rows, ds.Columns = stored12.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = stored12.astype("<u2").tobytes()
    stream = DicomBytesIO()
    stream.is_little_endian, stream.is_implicit_VR = True, True
    write_dataset(stream, ds)
    data = stream.getvalue()
    assert data[128:132] != b"DICM"

    image = read_image(data)
    assert image.format == "DICOM" and image.metadata["Modality"] == "CR"
    assert np.abs(image.pixels.astype(np.int16) - _stretch(stored12).astype(np.int16)).max() <= 1


def test_deflated_dicom_decodes(stored12):
    image = read_image(make_dicom(stored12, transfer_syntax=DeflatedExplicitVRLittleEndian))
    assert np.abs(image.pixels.astype(np.int16) - _stretch(stored12).astype(np.int16)).max() <= 1


@pytest.mark.timeout(120)  # a hang guard; memory is what inflating it all would cost
def test_deflated_dicom_bomb_is_refused_without_inflating_it_all(tmp_path):
    """Pydicom inflates a deflated dataset whole; a ~0.3 MB file that inflates to >320 MB must stop."""
    header = make_dicom(np.zeros((2, 2), np.uint16), transfer_syntax=DeflatedExplicitVRLittleEndian)
    meta_end = 144 + struct.unpack_from("<I", header, 140)[0]
    tag = struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\x00\x00" + struct.pack("<I", 400 << 20)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [deflater.compress(tag)]
    zeros = bytes(16 << 20)
    body += [deflater.compress(zeros) for _ in range(25)]
    body.append(deflater.flush())
    bomb = header[:meta_end] + b"".join(body)
    assert len(bomb) < 2_000_000

    with pytest.raises(ImageError, match="too large"):
        read_image(bomb)
    message, grown_mb = read_in_fresh_process(bomb, tmp_path)
    assert "too large" in message
    assert grown_mb < 200, f"the 400 MB element must not be inflated in memory (grew {grown_mb:.0f} MB)"


@pytest.fixture(scope="module")
def dicom_cases(stored12) -> dict[str, tuple[bytes, str]]:
    """Damaged or undecodable DICOM files and the exact message each must produce."""
    jpeg_ls = get_decoder(JPEGLSLossless).is_available
    jpeg_2000 = get_decoder(JPEG2000Lossless).is_available
    htj2k = get_decoder(HTJ2KLossless).is_available

    def compressed(ts, name, available):
        fake = encapsulate([b"\x00" * 64])
        data = make_dicom(stored12, transfer_syntax=ts, pixel_data=fake)
        if available:  # a decoder exists, so the fake payload must be reported as damaged
            return data, f"DICOM file is truncated or corrupt (its {name} image data could not be decoded)"
        return data, f"DICOM uses {name} compression, which this installation cannot decode"

    full = make_dicom(stored12, window=(1024.0, 4096.0))
    return {
        "no-pixel-data": (make_dicom(None), "DICOM file has no pixel data"),
        "truncated-in-pixels": (full[: len(full) // 2], "DICOM file is truncated or corrupt"),
        "truncated-in-header": (full[:300], "DICOM file is truncated or corrupt"),
        "truncated-last-byte": (full[:-1], "DICOM file is truncated or corrupt"),
        "jpeg-ls": compressed(JPEGLSLossless, "JPEG-LS", jpeg_ls),
        "jpeg-2000": compressed(JPEG2000Lossless, "JPEG 2000", jpeg_2000),
        "htj2k": compressed(HTJ2KLossless, "High-Throughput JPEG 2000", htj2k),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no-pixel-data",
        "truncated-in-pixels",
        "truncated-in-header",
        "truncated-last-byte",
        "jpeg-ls",
        "jpeg-2000",
        "htj2k",
    ],
)
def test_dicom_failures_have_clinician_messages(dicom_cases, case):
    data, message = dicom_cases[case]
    with pytest.raises(ImageError) as caught:
        read_image(data)
    assert str(caught.value) == message


def test_dicom_declaring_a_huge_frame_is_refused_before_pixel_access():
    """Eight bytes of pixel data: if the size were not checked first, the error would be 'corrupt'."""
    data = make_dicom(np.zeros((2, 2), np.uint16), pixel_data=b"\x00" * 8)
    rows = struct.pack("<HH", 0x0028, 0x0010) + b"US" + struct.pack("<HH", 2, 2)
    columns = struct.pack("<HH", 0x0028, 0x0011) + b"US" + struct.pack("<HH", 2, 2)
    assert data.count(rows) == 1 and data.count(columns) == 1
    data = data.replace(rows, rows[:-2] + struct.pack("<H", 40000))
    data = data.replace(columns, columns[:-2] + struct.pack("<H", 40000))

    with pytest.raises(ImageError, match=r"^image is 40000x40000 pixels, too large \(limit 64 megapixels\)$"):
        read_image(data)


def test_dicom_named_png_is_still_dicom(tmp_path, stored12):
    path = tmp_path / "upload.png"
    path.write_bytes(make_dicom(stored12))
    assert read_image(path).format == "DICOM"


# ------------------------------------------------------------------------------------------------
# Things that are not (usable) images
# ------------------------------------------------------------------------------------------------


def _png_with(width: int, height: int, idat: bytes, colour_type: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _corrupt_idat_crc(png: bytes) -> bytes:
    start, length = _idat_span(png)
    bad = bytearray(png)
    bad[start + length] ^= 0xFF
    return bytes(bad)


# (id, builder(gray png, jpeg, rgb png) -> bytes, expected message, or a regex if it starts with "re:")
NOT_IMAGES = [
    ("zero-bytes", lambda png, jpg, rgb: b"", "empty file"),
    (
        "plain-text",
        lambda png, jpg, rgb: b"Patient: chest PA, no acute findings.\n" * 20,
        "not an image (looks like a text file)",
    ),
    (
        "pdf",
        lambda png, jpg, rgb: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n",
        "not an image (looks like a PDF document)",
    ),
    ("svg-with-script", lambda png, jpg, rgb: SVG, "not an image (looks like an SVG drawing)"),
    (
        "html",
        lambda png, jpg, rgb: b"<!DOCTYPE html><html><body>x</body></html>",
        "not an image (looks like a web page (HTML))",
    ),
    ("zip", lambda png, jpg, rgb: _zip_bytes(), "not an image (looks like a ZIP archive or Office document)"),
    (
        "random-binary",
        lambda png, jpg, rgb: bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)),
        "re:^not an image",
    ),
    (
        "heic",
        lambda png, jpg, rgb: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
        "re:^unsupported image format \\(HEIC photo\\)",
    ),
    (
        "text-starting-BM",
        lambda png, jpg, rgb: b"BMI chart for patient follow-up\n" * 10,
        "not an image (looks like a text file)",
    ),
    ("png-truncated-half", lambda png, jpg, rgb: png[: len(png) // 2], "image file is truncated or corrupt"),
    ("png-missing-iend", lambda png, jpg, rgb: png[:-12], "image file is truncated or corrupt"),
    ("png-cut-in-last-crc", lambda png, jpg, rgb: png[:-14], "image file is truncated or corrupt"),
    ("png-signature-only", lambda png, jpg, rgb: png[:8], "image file is truncated or corrupt"),
    ("png-idat-crc", lambda png, jpg, rgb: _corrupt_idat_crc(png), "image file is truncated or corrupt"),
    (
        "png-idat-data",
        lambda png, jpg, rgb: _corrupt_idat_data_keep_crc(png),
        "image file is truncated or corrupt",
    ),
    (
        "png-no-idat",
        lambda png, jpg, rgb: png[:33] + _png_chunk(b"IEND", b""),
        "image file is truncated or corrupt",
    ),
    # An RGB PNG is decoded by Pillow, which forgives a missing tail, a bad CRC and missing rows.
    ("rgb-png-idat-crc", lambda png, jpg, rgb: _corrupt_idat_crc(rgb), "image file is truncated or corrupt"),
    ("rgb-png-missing-iend", lambda png, jpg, rgb: rgb[:-12], "image file is truncated or corrupt"),
    (
        "rgb-png-rows-missing",
        lambda png, jpg, rgb: _png_with(512, 512, zlib.compress(bytes((512 * 3 + 1) * 4)), colour_type=2),
        "image file is truncated or corrupt",
    ),
    (
        "gray-png-rows-missing",
        lambda png, jpg, rgb: _png_with(512, 512, zlib.compress(bytes(513 * 4))),
        "image file is truncated or corrupt",
    ),
    ("jpeg-truncated-half", lambda png, jpg, rgb: jpg[: len(jpg) // 2], "image file is truncated or corrupt"),
    ("jpeg-missing-eoi-and-tail", lambda png, jpg, rgb: jpg[:-40], "image file is truncated or corrupt"),
    ("jpeg-header-only", lambda png, jpg, rgb: jpg[:300], "image file is truncated or corrupt"),
    ("bmp-garbage", lambda png, jpg, rgb: b"BM" + b"\xff\x00" * 40, "image file is truncated or corrupt"),
]


@pytest.fixture(scope="module")
def encoded(xray) -> tuple[bytes, bytes, bytes]:
    return (
        _save(Image.fromarray(xray), "PNG"),
        _save(Image.fromarray(xray), "JPEG", quality=90),
        _save(_rgb(xray), "PNG"),
    )


@pytest.mark.parametrize(("builder", "message"), [pytest.param(*row[1:], id=row[0]) for row in NOT_IMAGES])
def test_unreadable_inputs_raise_image_error_with_a_readable_message(tmp_path, encoded, builder, message):
    path = tmp_path / "upload.png"  # the name always claims PNG; content decides
    path.write_bytes(builder(*encoded))
    with pytest.raises(ImageError) as caught:
        read_image(path)
    if message.startswith("re:"):
        assert re.search(message[3:], str(caught.value)), str(caught.value)
    else:
        assert str(caught.value) == message


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "WEBP", "BMP"])
def test_truncated_files_of_other_formats_are_reported_as_such(xray, fmt):
    data = _save(_gray_palette_image(xray) if fmt == "GIF" else Image.fromarray(xray), fmt)
    with pytest.raises(ImageError, match="^image file is truncated or corrupt$"):
        read_image(data[: len(data) // 2])


def test_missing_path_and_folder_have_clear_messages(tmp_path):
    with pytest.raises(ImageError, match="file not found: .*nowhere.png"):
        read_image(tmp_path / "nowhere.png")
    with pytest.raises(ImageError, match="is a folder, not an image file"):
        read_image(tmp_path)


def test_wrong_argument_type_is_a_programming_error():
    with pytest.raises(TypeError):
        read_image(12345)


# ------------------------------------------------------------------------------------------------
# Decompression bombs
# ------------------------------------------------------------------------------------------------


PEAK_READ = """
import resource, sys
from cxr_core.errors import ImageError
from cxr_core.imaging.decode import read_image
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_image(data)
    print("accepted")
except ImageError as error:
    print(error)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024.0)
"""


def read_in_fresh_process(data: bytes, tmp_path: Path) -> tuple[str, float]:
    """``read_image`` in a new process: its message, and how much its peak memory grew while reading.

    The test process's own peak is already high from earlier tests, so only a fresh process shows
    whether reading allocated the image.
    """
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    run = subprocess.run(
        [sys.executable, "-c", PEAK_READ, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 0, run.stderr[-2000:]
    message, grown = run.stdout.strip().splitlines()[-2:]
    return message, float(grown)


@pytest.mark.parametrize(
    ("width", "height", "colour_type"),
    [
        pytest.param(40000, 40000, 0, id="40000x40000-gray-beyond-pillow-limit"),
        pytest.param(40000, 40000, 6, id="40000x40000-rgba"),
        pytest.param(10000, 10000, 0, id="100MP-in-pillow-warning-band"),
        pytest.param(8001, 8000, 0, id="just-over-64MP"),
    ],
)
def test_png_bomb_is_refused_from_the_header_without_decoding(width, height, colour_type, tmp_path):
    channels = {0: 1, 6: 4}[colour_type]
    first_rows = zlib.compress(bytes((width * channels + 1) * 4), 9)  # a few real rows, then nothing
    bomb = _png_with(width, height, first_rows, colour_type)
    assert len(bomb) < 10_000

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's own DecompressionBombWarning must not leak out either
        with pytest.raises(ImageError) as caught:
            read_image(bomb)

    assert str(caught.value) == f"image is {width}x{height} pixels, too large (limit 64 megapixels)"
    message, grown_mb = read_in_fresh_process(bomb, tmp_path)
    assert message == str(caught.value)
    assert grown_mb < 100, f"refused before decoding, yet memory grew {grown_mb:.0f} MB"


def _patch_jpeg(data: bytearray, width: int, height: int) -> None:
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)


def _patch_bmp(data: bytearray, width: int, height: int) -> None:
    data[18:26] = struct.pack("<ii", width, height)


def _patch_gif(data: bytearray, width: int, height: int) -> None:
    data[6:10] = struct.pack("<HH", width, height)
    descriptor = data.index(b",", 13)
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)


def _patch_tiff(data: bytearray, width: int, height: int) -> None:
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):
            value = width if tag == 256 else height
            data[entry + 8 : entry + 12] = struct.pack(
                "<HH" if kind == 3 else "<I", *([value, 0] if kind == 3 else [value])
            )


@pytest.mark.parametrize(
    ("fmt", "patch"),
    [("JPEG", _patch_jpeg), ("BMP", _patch_bmp), ("GIF", _patch_gif), ("TIFF", _patch_tiff)],
)
def test_header_bombs_in_other_formats_are_refused_with_their_size(fmt, patch, monkeypatch):
    small = Image.fromarray(np.zeros((16, 16), np.uint8))
    data = bytearray(_save(small if fmt != "GIF" else small.convert("P"), fmt))
    patch(data, 40000, 30000)
    decoded = []
    with monkeypatch.context() as patched:  # refused from the header: no pixel may be decoded
        patched.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or None)
        with pytest.raises(
            ImageError, match=r"^image is 40000x30000 pixels, too large \(limit 64 megapixels\)$"
        ):
            read_image(bytes(data))
    assert decoded == []


def test_oversized_file_is_refused_before_reading(tmp_path, monkeypatch):
    import cxr_core.imaging.decode as cxr_io

    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(4096))
    monkeypatch.setattr(cxr_io, "MAX_FILE_BYTES", 1024)
    with pytest.raises(ImageError, match="^file is larger than 0 MB, too large for an X-ray$"):
        read_image(path)
    with pytest.raises(ImageError, match="too large for an X-ray"):
        read_image(path.read_bytes())


def test_a_frame_exactly_at_the_limit_is_not_refused_as_a_bomb():
    """The limit is inclusive: 8000x8000 passes the size check and fails later, on its missing rows."""
    assert MAX_PIXELS == 64_000_000
    bomb = _png_with(8000, 8000, zlib.compress(bytes(8001 * 4), 9))
    with pytest.raises(ImageError) as caught:
        read_image(bomb)
    assert "too large" not in str(caught.value)


# ------------------------------------------------------------------------------------------------
# Plausibility: colour photos, blank frames, tiny images, real X-rays
# ------------------------------------------------------------------------------------------------


def _tinted(x: np.ndarray, gains, offsets=(0, 0, 0)) -> np.ndarray:
    channels = [x.astype(np.float32) * g + o for g, o in zip(gains, offsets, strict=True)]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def _annotated(x: np.ndarray) -> np.ndarray:
    im = _rgb(x)
    draw = ImageDraw.Draw(im)
    draw.line([(60, 60), (200, 200)], fill=(255, 0, 0), width=4)
    draw.rectangle([300, 300, 400, 380], outline=(0, 255, 0), width=3)
    draw.text((10, 10), "R   PA ERECT", fill=(255, 255, 0))
    return np.array(im)


def test_colour_photograph_is_refused():
    image = read_image(_save(Image.fromarray(_synthetic_photo()), "JPEG", quality=90))
    assert image.colourfulness > COLOURFULNESS_LIMIT
    with pytest.raises(ImageError, match="^this looks like a colour photograph, not an X-ray$"):
        check_plausible_radiograph(image)


@pytest.mark.parametrize(
    "builder",
    [
        pytest.param(lambda x: _tinted(x, (1.0, 0.85, 0.65)), id="sepia-film"),
        pytest.param(lambda x: _tinted(x, (0.8, 0.9, 1.0), (0, 0, 20)), id="blue-lightbox-cast"),
        pytest.param(lambda x: _tinted(x, (0.7, 1.0, 0.75)), id="green-monitor"),
        pytest.param(_annotated, id="coloured-annotations"),
    ],
)
def test_tinted_or_annotated_radiographs_are_not_mistaken_for_photos(xray, builder):
    image = read_image(_save(Image.fromarray(builder(xray)), "PNG"))
    assert image.colourfulness < COLOURFULNESS_LIMIT / 2
    check_plausible_radiograph(image)


def _black_with_text() -> np.ndarray:
    im = Image.new("L", (512, 512))
    ImageDraw.Draw(im).text((5, 5), "NO IMAGE AVAILABLE", fill=255)
    return np.array(im)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(np.full((512, 512), 128, np.uint8), id="flat-gray"),
        pytest.param(np.zeros((512, 512), np.uint8), id="black"),
        pytest.param(
            np.clip(np.random.default_rng(0).normal(128, 1.5, (512, 512)), 0, 255).astype(np.uint8),
            id="gray-with-sensor-noise",
        ),
        pytest.param(
            np.array(
                ImageDraw.Draw(im := Image.new("L", (512, 512))).text((5, 5), "NO IMAGE", fill=255) or im
            ),
            id="black-with-burnt-in-text",
        ),
    ],
)
def test_blank_frames_are_refused(frame):
    image = read_image(_save(Image.fromarray(frame), "PNG"))
    with pytest.raises(ImageError, match="^the image is blank or nearly uniform$"):
        check_plausible_radiograph(image)


@pytest.mark.parametrize(("width", "height"), [(4, 4), (63, 300), (300, 10)])
def test_tiny_images_are_refused(xray, width, height):
    image = read_image(_save(Image.fromarray(xray).resize((width, height)), "PNG"))
    with pytest.raises(ImageError, match=f"^image is {width}x{height} pixels, too small to assess$"):
        check_plausible_radiograph(image)


def test_small_but_usable_image_gets_a_warning_not_a_refusal(xray):
    image = read_image(_save(Image.fromarray(xray).resize((200, 180)), "PNG"))
    assert image.warnings == ["small image: 200x180, result less reliable"]
    check_plausible_radiograph(image)
    assert image.warnings == ["small image: 200x180, result less reliable"]  # not duplicated
    assert MIN_SIDE == 64


def test_colourfulness_is_zero_for_gray_and_high_for_colour(xray):
    assert colourfulness(xray) == 0.0
    assert colourfulness(np.repeat(xray[..., None], 3, axis=2)) == 0.0
    assert colourfulness(_synthetic_photo()) > 2 * COLOURFULNESS_LIMIT


def _sample(shared_cxr: Path, source: str, count: int) -> list[Path]:
    with open(shared_cxr / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["source"] == source]
    step = max(1, len(rows) // count)
    return [shared_cxr / r["path"] for r in rows[::step][:count]]


@pytest.mark.parametrize("source", ["tbx11k", "openist", "shenzhen"])
def test_real_xrays_from_every_source_decode_exactly_and_pass_plausibility(shared_cxr, source):
    paths = _sample(shared_cxr, source, 25)
    assert paths, f"no {source} images in the shared manifest"
    for path in paths:
        image = read_image(path)
        reference = np.array(Image.open(path).convert("L"))
        assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 2
        assert np.array_equal(image.pixels, reference), path.name
        assert image.colourfulness == 0.0
        check_plausible_radiograph(image)  # must not raise for a real radiograph


def test_real_xrays_saved_as_colour_jpeg_still_pass(shared_cxr):
    paths = _sample(shared_cxr, "openist", 5) + _sample(shared_cxr, "tbx11k", 5)
    assert len(paths) == 10, paths  # an empty sample would pass the loop below without checking a film
    for path in paths:
        image = read_image(_save(Image.open(path).convert("RGB"), "JPEG", quality=85))
        assert image.colourfulness < 1.0
        check_plausible_radiograph(image)


# ------------------------------------------------------------------------------------------------
# Cost and import hygiene
# ------------------------------------------------------------------------------------------------


def test_module_imports_without_tensorflow_streamlit_or_pydicom():
    code = (
        "import sys, cxr_core.imaging.decode\n"
        "bad = [m for m in ('tensorflow', 'keras', 'streamlit', 'pydicom') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_every_failure_is_an_image_error_not_a_traceback(encoded):
    """Fuzz: cut and flip bytes of valid files; anything but success or ImageError is a bug."""
    rng = np.random.default_rng(7)
    for original in encoded:
        for _ in range(40):
            data = bytearray(original[: int(rng.integers(1, len(original)))])
            for pos in rng.integers(0, len(data), size=int(rng.integers(0, 4))):
                data[pos] ^= int(rng.integers(1, 256))
            try:
                image = read_image(bytes(data))
            except ImageError:
                continue
            assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 2
