"""Builders of test inputs shared by several test files (a DICOM writer, encoders, damaged files), so each
test file does not grow its own copy."""

import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def make_dicom(
    pixels,
    *,
    photometric="MONOCHROME2",
    bits_stored=12,
    bits_allocated=16,
    slope=None,
    intercept=None,
    window=None,
    transfer_syntax=ExplicitVRLittleEndian,
    pixel_data=None,
    frames=None,
    samples=1,
    study=False,
) -> bytes:
    """A Part 10 DICOM file (preamble + DICM + file meta) with the tags a chest DX export carries."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN-0042"
    ds.PatientBirthDate = "19700101"
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    if study:  # the study's identity, as a PACS export carries it
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.12345"
        ds.StudyDate = "20240131"
        ds.AccessionNumber = "ACC-7"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-3:-1] if samples > 1 else pixels.shape[-2:]
        ds.SamplesPerPixel = samples
        if samples > 1:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = bits_allocated
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 0
        if frames:
            ds.NumberOfFrames = frames
        if slope is not None:
            ds.RescaleSlope = slope
            ds.RescaleIntercept = intercept
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        dtype = "<u2" if bits_allocated == 16 else "u1"
        ds.PixelData = pixel_data if pixel_data is not None else pixels.astype(dtype).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _save(im: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def _gray_palette_image(x: np.ndarray) -> Image.Image:
    im = Image.frombytes("P", (x.shape[1], x.shape[0]), x.tobytes())
    im.putpalette([v for i in range(256) for v in (i, i, i)])
    return im


def _rgb(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(x[..., None], 3, axis=2))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _idat_span(png: bytes) -> tuple[int, int]:
    """(offset of the first IDAT payload, its length)."""
    pos = png.index(b"IDAT")
    return pos + 4, struct.unpack(">I", png[pos - 4 : pos])[0]


def _corrupt_idat_data_keep_crc(png: bytes) -> bytes:
    """Damage the compressed stream but fix up the CRC, so only the decoder can notice."""
    start, length = _idat_span(png)
    bad = bytearray(png)
    for i in range(start + 50, start + 120):
        bad[i] ^= 0x5A
    bad[start + length : start + length + 4] = struct.pack(
        ">I", zlib.crc32(bytes(bad[start - 4 : start + length]))
    )
    return bytes(bad)


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("Normal/1.png", b"not really")
    return buffer.getvalue()


def _synthetic_photo(height=300, width=400, seed=0) -> np.ndarray:
    """Sky over a meadow with a red flower bed: gradients plus noise, colourful like a snapshot."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    sky = np.stack([90 + 60 * yy, 150 + 50 * yy, 230 - 30 * yy], axis=-1)
    grass = np.stack([60 + 40 * xx, 140 + 60 * yy, 40 + 20 * xx], axis=-1)
    photo = np.where((yy > 0.55)[..., None], grass, sky)
    flowers = (yy > 0.75) & (np.sin(xx * 40) > 0.6)
    photo[flowers] = (210, 40, 50)
    return np.clip(photo + rng.normal(0, 12, photo.shape), 0, 255).astype(np.uint8)


SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="512" height="512">'
    b"<script>alert('x')</script><rect width='512' height='512'/></svg>\n"
)


def clinic_folder(folder, rows, shared_cxr):
    """A clinic's confirmed films as the pipeline reads them: copies of shared films plus a manifest.csv."""
    import csv
    import shutil
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for row in rows:
            name = Path(row["path"]).name
            shutil.copy(shared_cxr / row["path"], folder / name)
            writer.writerow([name, row["label"]])
    return folder


def make_dx_film(
    pixels: np.ndarray,
    *,
    study_uid: str,
    sop_uid: str | None = None,
    series_uid: str | None = None,
    modality: str = "DX",
    view: str = "PA",
    body_part: str = "CHEST",
    intent: str = "FOR PRESENTATION",
    patient=("Doe^Jane", "MRN-0042"),
) -> bytes:
    """A chest film as a modality sends it to the PACS: DX (or CR) Image Storage, 8-bit MONOCHROME2, with
    the patient, study and series identity a PACS files it by."""
    from pydicom.uid import (
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        DigitalXRayImageStorageForProcessing,
    )

    if modality == "CR":
        sop_class = ComputedRadiographyImageStorage
    elif intent == "FOR PROCESSING":
        sop_class = DigitalXRayImageStorageForProcessing
    else:
        sop_class = DigitalXRayImageStorageForPresentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = patient
    ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240131", "101500", "ACC-7", "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ViewPosition = view
    ds.BodyPartExamined = body_part
    ds.PatientOrientation = ["L", "F"]
    if modality == "DX":
        ds.PresentationIntentType = intent
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, np.uint8).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
