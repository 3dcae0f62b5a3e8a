"""Builders of test inputs shared by several test files (a DICOM writer, so each test does not grow its own)."""

import io

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
