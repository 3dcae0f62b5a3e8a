"""DICOM: the radiology format, read with pydicom into the same :class:`DecodedImage` as any picture.

Kept apart from the other decoders because it has its own hazards: MONOCHROME1 (inverted) films,
VOI LUT and window settings, rescale slopes, deflated and compressed transfer syntaxes, patient
identifiers in the header, and ``force=True`` reads of preamble-less files, which pydicom would
"succeed" on for any bytes at all. pydicom is imported only when a DICOM file turns up.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from cxr_core.errors import ImageError
from cxr_core.imaging.pixels import (
    _DECODE_ERRORS,
    MAX_PIXELS,
    DecodedImage,
    _fits_uint16,
    _rgb_image_to_gray,
    _stretch,
    _too_large,
)

_DICOM_CORRUPT = "DICOM file is truncated or corrupt"
_DEFLATED_UID = b"1.2.840.10008.1.2.1.99"
MAX_DICOM_FRAME_BYTES = 2 * MAX_PIXELS  # a 64-megapixel 16-bit gray frame, the largest film accepted


def looks_like_raw_dicom(data: bytes) -> bool:
    """A DICOM stream without the 128-byte preamble (old ACR-NEMA exports, some PACS dumps).

    pydicom's ``force=True`` will "read" any bytes at all, so it is only tried when the file starts
    like a DICOM element in group 0002 or 0008 with a real VR or a sane implicit length.
    """
    if len(data) < 12:
        return False
    for endian in ("<", ">"):
        group, element = struct.unpack_from(endian + "HH", data, 0)
        if group not in (0x0002, 0x0008) or element > 0x00FF:
            continue
        vr = data[4:6]
        if vr.isalpha() and vr.isupper():
            return True
        (length,) = struct.unpack_from(endian + "I", data, 4)
        if length < min(len(data), 1024):
            return True
    return False


_DICOM_FIELDS = (
    "Modality",
    "PhotometricInterpretation",
    "ViewPosition",
    "BodyPartExamined",
    "BitsStored",
    "BitsAllocated",
    "SamplesPerPixel",
    "NumberOfFrames",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "PixelSpacing",
    "ImagerPixelSpacing",
)
# Read only with include_identifiers=True: who the film belongs to and which study it is part of (the
# study fields let a result be filed back with the study in a PACS, see dicom_out).
_DICOM_IDENTIFIERS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyInstanceUID",
    "StudyID",
    "ReferringPhysicianName",
)


def _compression_name(uid: Any) -> str:
    name = str(getattr(uid, "name", "") or uid)
    for key, label in (
        ("JPEG-LS", "JPEG-LS"),
        ("High-Throughput", "High-Throughput JPEG 2000"),
        ("JPEG 2000", "JPEG 2000"),
        ("JPEG XL", "JPEG XL"),
        ("JPEG", "JPEG"),
        ("RLE", "RLE"),
        ("MPEG", "MPEG video"),
        ("H.264", "H.264 video"),
        ("HEVC", "HEVC video"),
    ):
        if key in name:
            return label
    return name


def read_dicom(data: bytes, include_identifiers: bool, forced: bool) -> DecodedImage:
    import pydicom
    from pydicom.errors import BytesLengthException, InvalidDicomError

    _check_deflated_size(data)
    try:
        # pydicom reports a file cut inside a sequence only as a UserWarning; record warnings so
        # that case is caught (and its harmless format grumbles stay out of the clinician's log).
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(io.BytesIO(data), force=forced)
        if _dicom_is_cut(ds, caught, len(data)):
            raise ImageError(_DICOM_CORRUPT)
        # Touch the elements we need now so a damaged header fails here, with the DICOM message.
        has_pixels = any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
        rows = int(ds.get("Rows") or 0)
        columns = int(ds.get("Columns") or 0)
    except ImageError:
        raise
    except (InvalidDicomError, BytesLengthException, *_DECODE_ERRORS) as exc:
        raise ImageError(_DICOM_CORRUPT) from exc
    except MemoryError as exc:
        raise ImageError("DICOM file is too large to read on this machine") from exc

    if not has_pixels:
        if rows or columns:  # it describes an image, so the pixels were most likely cut off
            raise ImageError("DICOM file has no pixel data (the file may be truncated)")
        raise ImageError("DICOM file has no pixel data")
    if rows <= 0 or columns <= 0:
        raise ImageError(f"{_DICOM_CORRUPT} (it has no image size)")
    if rows * columns > MAX_PIXELS:
        raise _too_large(columns, rows)
    # The decoded frame's size, not just its pixel count: three samples of 32 bits each take twelve
    # times the memory of one 8-bit sample, and the pixel count alone let such a frame through.
    samples = max(1, _int_or(ds.get("SamplesPerPixel"), 1))
    bits_allocated = max(1, _int_or(ds.get("BitsAllocated"), 16))
    frame_bytes = rows * columns * samples * ((bits_allocated + 7) // 8)
    if frame_bytes > MAX_DICOM_FRAME_BYTES:
        raise ImageError(
            f"DICOM image is {columns}x{rows} pixels with {samples} sample(s) of {bits_allocated} bits: "
            f"{frame_bytes >> 20} MB per frame, too large (limit {MAX_DICOM_FRAME_BYTES >> 20} MB)"
        )

    tsyntax = _transfer_syntax(ds)
    compression = _compression_name(tsyntax) if tsyntax.is_compressed else None
    if compression is not None:
        from pydicom.pixels import get_decoder

        try:
            available = get_decoder(tsyntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise ImageError(f"DICOM uses {compression} compression, which this installation cannot decode")

    try:
        image = _dicom_pixels(ds, rows, columns)
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError("DICOM image is too large to decode on this machine") from exc
    except (Image.DecompressionBombError, BytesLengthException, *_DECODE_ERRORS) as exc:
        suffix = f" (its {compression} image data could not be decoded)" if compression else ""
        raise ImageError(_DICOM_CORRUPT + suffix) from exc

    image.metadata.update(_dicom_metadata(ds, include_identifiers))
    image.metadata["TransferSyntax"] = str(getattr(tsyntax, "name", tsyntax))
    frames = _int_or(ds.get("NumberOfFrames"), 1)
    if frames > 1:
        image.warnings.append(f"the DICOM file holds {frames} frames; only the first one was read")
    return image


def _dicom_is_cut(ds: Any, caught: list[warnings.WarningMessage], size: int) -> bool:
    """Whether the file ended inside an element; pydicom silently keeps whatever it could read.

    Three signs: pydicom's end-of-file warning (cut inside a sequence), a value shorter than its
    declared length (cut inside a value), or 1-7 unparsed trailing bytes (cut inside an element
    header, which pydicom drops without a word).
    """
    from pydicom.dataelem import RawDataElement

    if any("end of file" in str(w.message).lower() for w in caught):
        return True
    if len(ds) == 0:
        return True
    last_end = 0
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields converted elements, not tags
        elem = ds.get_item(tag)
        if not isinstance(elem, RawDataElement) or elem.length == 0xFFFFFFFF:
            last_end = -1  # an undefined-length item: its end is not recorded, skip the trailing check
            continue
        if elem.value is not None and len(elem.value) < elem.length:
            return True
        last_end = elem.value_tell + elem.length
    tsyntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    deflated = bool(tsyntax) and getattr(tsyntax, "is_deflated", False)
    return last_end > 0 and not deflated and 0 < size - last_end < 8


def _check_deflated_size(data: bytes) -> None:
    """Deflated DICOM is inflated whole by pydicom, so bound the inflated size before it does."""
    if data[128:132] != b"DICM" or _DEFLATED_UID not in data[132:4096]:
        return
    if data[132:136] != b"\x02\x00\x00\x00" or data[136:138] != b"UL":
        return  # no group length: let pydicom decide, it will fail cleanly or read it
    start = 144 + struct.unpack_from("<I", data, 140)[0]
    limit = 4 * MAX_PIXELS + (64 << 20)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, total = data[start:], 0
    try:
        while pending and not inflater.eof:
            total += len(inflater.decompress(pending, 1 << 24))
            if total > limit:
                raise ImageError(f"DICOM file expands to more than {limit >> 20} MB, too large")
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise ImageError(_DICOM_CORRUPT) from exc


def _transfer_syntax(ds: Any) -> Any:
    """The dataset's transfer syntax, filled in for preamble-less files pydicom read with force=True."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    tsyntax = meta.get("TransferSyntaxUID")
    if not tsyntax:
        implicit, little = ds.original_encoding
        if implicit:
            tsyntax = ImplicitVRLittleEndian
        else:
            tsyntax = ExplicitVRLittleEndian if little in (True, None) else ExplicitVRBigEndian
        meta.TransferSyntaxUID = tsyntax
    return tsyntax


def _dicom_pixels(ds: Any, rows: int, columns: int) -> DecodedImage:
    """First frame of the dataset as display-ready gray: modality LUT, VOI/window, MONOCHROME1 flip."""
    from pydicom.pixels import (
        apply_color_lut,
        apply_modality_lut,
        apply_voi_lut,
        apply_windowing,
        pixel_array,
    )

    arr = pixel_array(ds, index=0)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = _int_or(ds.get("BitsStored"), _int_or(ds.get("BitsAllocated"), 8))

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        lut_bits = 16 if rgb.dtype.itemsize > 1 else 8
        return _dicom_from_rgb(rgb, lut_bits, bits)
    if arr.ndim == 3:  # RGB / YBR (pydicom already converted YBR to RGB)
        return _dicom_from_rgb(arr, bits, bits)

    values = apply_modality_lut(arr, ds)
    metadata: dict[str, Any] = {}
    if ds.get("VOILUTSequence"):
        # A LUT is indexed by integers; rescaled values are whole numbers in practice, so round
        # rather than let pydicom truncate floats (and warn about it).
        lut_input = values if np.issubdtype(values.dtype, np.integer) else np.rint(values).astype(np.int64)
        out = apply_voi_lut(lut_input, ds, index=0)
        gray = _stretch(out, float(out.min()), float(out.max()))
        metadata["voi"] = "LUT"
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            out = apply_windowing(values, ds, index=0)
            with np.errstate(over="ignore", invalid="ignore"):
                lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds, index=0)
            gray = _stretch(out, float(lo), float(hi))
            metadata["voi"] = "window"
        except (ValueError, TypeError, IndexError):  # unusable window: show the full range instead
            gray = _stretch(values, float(values.min()), float(values.max()))
            metadata["voi"] = "min-max (stored window unusable)"
    else:
        gray = _stretch(values, float(values.min()), float(values.max()))
        metadata["voi"] = "min-max"
    if photometric == "MONOCHROME1":
        np.subtract(255, gray, out=gray)
    return DecodedImage(np.ascontiguousarray(gray), "DICOM", columns, rows, bits, [], metadata, 0.0)


def _dicom_from_rgb(rgb: np.ndarray, value_bits: int, bits_stored: int) -> DecodedImage:
    if rgb.dtype != np.uint8:
        if np.issubdtype(rgb.dtype, np.integer) and _fits_uint16(rgb):
            denom = (1 << max(8, min(16, value_bits))) - 1
            rgb = ((rgb.astype(np.uint32) * 255 + denom // 2) // denom).clip(0, 255).astype(np.uint8)
        else:
            rgb = _stretch(rgb, float(rgb.min()), float(rgb.max()))
    im = Image.fromarray(np.ascontiguousarray(rgb[..., :3]), mode="RGB")
    gray, _, colour = _rgb_image_to_gray(im)
    height, width = gray.shape
    return DecodedImage(gray, "DICOM", width, height, bits_stored, [], {}, colour)


def _dicom_metadata(ds: Any, include_identifiers: bool) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for key in _DICOM_FIELDS + (_DICOM_IDENTIFIERS if include_identifiers else ()):
        try:
            value = ds.get(key)
        except Exception:  # a malformed optional element is not worth refusing the image for
            continue
        if value is None or value == "":
            continue
        if key in ("WindowCenter", "WindowWidth"):
            value = _first(value)
        metadata[key] = _json_safe(value)
    return metadata


def _first(value: Any) -> Any:
    if _is_sequence(value):
        return value[0] if len(value) else None
    return value


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _json_safe(value: Any) -> Any:
    """pydicom values (DSfloat, IS, PersonName, MultiValue) as plain JSON types for logs and CSVs."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if _is_sequence(value):
        return [_json_safe(v) for v in value]
    return str(value)


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default
