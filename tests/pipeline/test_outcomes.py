"""Confirmed outcomes build a local labelled set with no identifiers, which the pipeline can read."""

import csv

import numpy as np
import pytest
from builders import make_dicom
from PIL import Image

from cxr_core.errors import CxrError
from cxr_core.imaging.decode import read_image
from cxr_core.pipeline.datasets import discover
from cxr_core.pipeline.outcomes import local_set_counts, record_outcome, recorded_outcome
from cxr_core.registry import audit


def test_outcomes_are_recorded_corrected_and_withdrawn_without_identifiers(
    tmp_path, monkeypatch, real_xray_path
):
    monkeypatch.setenv("CXR_MODELS_DIR", str(tmp_path / "models"))
    folder = tmp_path / "local"
    pixels = np.array(Image.open(real_xray_path).convert("L"))
    dicom = read_image(make_dicom(pixels.astype(np.uint16) * 16), include_identifiers=True)
    assert dicom.metadata.get("PatientName"), "precondition: the DICOM carries a patient name"

    record_outcome(dicom.pixels, "tb", folder=folder, actor="dashboard:session:x")
    record_outcome(pixels[::2, ::2].copy(), "not_tb", folder=folder)
    assert local_set_counts(folder) == {"Tuberculosis": 1, "Normal": 1}
    assert recorded_outcome(dicom.pixels, folder) == "tb"
    record_outcome(dicom.pixels, "not_tb", folder=folder)  # corrected: still one entry for the film
    assert local_set_counts(folder) == {"Tuberculosis": 0, "Normal": 2}

    stored = sorted((folder / "films").glob("*.png"))
    assert len(stored) == 2
    for path in stored:
        image = Image.open(path)
        assert not image.info and "PatientName" not in path.read_bytes().decode("latin-1")
    with open(folder / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["source"] for row in rows} == {"local"} and set(rows[0]) == {
        "path",
        "label",
        "source",
        "recorded",
    }

    found = discover(folder)  # the pipeline, local validation and the Retrain page read it as a dataset
    assert found.layout == "manifest" and len(found.records) == 2 and found.source_counts == {"local": 2}

    record_outcome(dicom.pixels, "unknown", folder=folder)  # withdrawn
    assert recorded_outcome(dicom.pixels, folder) is None and local_set_counts(folder)["Normal"] == 1
    assert [e["action"] for e in audit.read(tmp_path / "models")] == ["outcome_recorded"] * 4
    with pytest.raises(CxrError):
        record_outcome(pixels, "maybe", folder=folder)
