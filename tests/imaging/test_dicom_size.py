"""The DICOM size check counts what a frame takes in memory: samples per pixel and bits allocated too."""

import numpy as np
import pytest
from builders import make_dicom

from cxr_core.errors import ImageError
from cxr_core.imaging.decode import MAX_PIXELS, read_image
from cxr_core.imaging.dicom import MAX_DICOM_FRAME_BYTES


def header_only(rows, columns, samples, bits_allocated) -> bytes:
    """A DICOM that declares a frame of this size (the pixel count alone is under the limit)."""
    shape = (rows, columns, samples) if samples > 1 else (rows, columns)
    declared = np.broadcast_to(np.uint8(0), shape)  # only its shape is read: no memory is taken
    return make_dicom(declared, photometric="RGB" if samples == 3 else "MONOCHROME2", samples=samples,
                      bits_allocated=bits_allocated, bits_stored=bits_allocated, pixel_data=b"\0" * 64)  # fmt: skip


def test_a_frame_under_the_pixel_limit_but_too_large_in_memory_is_refused_before_decoding():
    rows = columns = 6000
    assert rows * columns < MAX_PIXELS  # what the old check looked at, and let through
    with pytest.raises(ImageError, match=r"6000x6000 pixels with 3 sample\(s\) of 32 bits: 411 MB per frame"):
        read_image(header_only(rows, columns, 3, 32))
    with pytest.raises(ImageError, match="too large"):
        read_image(header_only(rows, columns, 1, 32))  # one sample, but 4 bytes each: 137 MB
    assert rows * columns * 2 <= MAX_DICOM_FRAME_BYTES  # the same size at 16 bits is a normal film


def test_an_ordinary_16_bit_film_still_decodes():
    pixels = (np.arange(256 * 256, dtype=np.uint32).reshape(256, 256) % 4096).astype(np.uint16)
    image = read_image(make_dicom(pixels, bits_allocated=16, bits_stored=12))
    assert image.pixels.shape == (256, 256)
