"""Confirmed outcomes build a local labelled set with no identifiers, which the pipeline can read."""

import csv
import multiprocessing
import struct

import numpy as np
import pytest
from builders import make_dicom
from PIL import Image

from cxr_core.errors import CxrError
from cxr_core.imaging.decode import read_image
from cxr_core.pipeline.datasets import discover
from cxr_core.pipeline.outcomes import film_key, local_set_counts, record_outcome, recorded_outcome
from cxr_core.registry import audit


def png_chunk_types(data: bytes) -> set[bytes]:
    types, offset = set(), 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        types.add(data[offset + 4 : offset + 8])
        offset += 12 + length
    return types


def test_outcomes_are_recorded_corrected_and_withdrawn_without_identifiers(
    tmp_path, monkeypatch, real_xray_path
):
    monkeypatch.setenv("CXR_MODELS_DIR", str(tmp_path / "models"))
    folder = tmp_path / "local"
    pixels = np.array(Image.open(real_xray_path).convert("L"))
    dicom = read_image(make_dicom(pixels.astype(np.uint16) * 16), include_identifiers=True)
    assert dicom.metadata.get("PatientName"), "precondition: the DICOM carries a patient name"

    record_outcome(dicom.pixels, "tb", folder=folder, actor="dashboard:session:x")
    record_outcome(pixels[::2, ::2].copy(), "not_tb", folder=folder, actor="dashboard:alice")
    assert local_set_counts(folder) == {"Tuberculosis": 1, "Normal": 1}
    assert recorded_outcome(dicom.pixels, folder) == "tb"
    record_outcome(dicom.pixels, "not_tb", folder=folder, actor="dashboard:alice")  # corrected: one entry
    assert local_set_counts(folder) == {"Tuberculosis": 0, "Normal": 2}

    stored = sorted((folder / "films").glob("*.png"))
    assert len(stored) == 2
    for path in stored:  # the pixels and nothing else: no text, EXIF or time chunk, named by a hash
        assert png_chunk_types(path.read_bytes()) <= {b"IHDR", b"IDAT", b"IEND"}
        assert len(path.stem) == 64 and path.stem in {film_key(dicom.pixels), film_key(pixels[::2, ::2])}
    assert np.array_equal(np.array(Image.open(folder / "films" / f"{film_key(dicom.pixels)}.png")), dicom.pixels)
    patient = str(dicom.metadata["PatientName"]).encode()
    for path in folder.rglob("*"):
        assert not path.is_file() or patient not in path.read_bytes()
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

    record_outcome(dicom.pixels, "unknown", folder=folder, actor="dashboard:alice")  # withdrawn
    assert recorded_outcome(dicom.pixels, folder) is None and local_set_counts(folder)["Normal"] == 1
    assert [e["action"] for e in audit.read(tmp_path / "models")] == ["outcome_recorded"] * 4
    with pytest.raises(CxrError):
        record_outcome(pixels, "maybe", folder=folder, actor="dashboard:alice")


def test_an_outcome_needs_a_named_actor_and_is_audited(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_MODELS_DIR", str(tmp_path / "models"))
    film = np.full((64, 64), 7, dtype=np.uint8)
    for nobody in (None, "", "  "):
        with pytest.raises(CxrError, match="named administrator"):
            record_outcome(film, "tb", folder=tmp_path / "local", actor=nobody)
    assert local_set_counts(tmp_path / "local") == {"Tuberculosis": 0, "Normal": 0}
    record_outcome(film, "tb", folder=tmp_path / "local", actor="dashboard:alice@10.0.0.5")
    (entry,) = audit.read(tmp_path / "models")
    assert entry["actor"] == "dashboard:alice@10.0.0.5" and entry["label"] == "tb"


def _save_many(folder, offset, count):
    for i in range(count):
        record_outcome(np.full((16, 16), offset + i, dtype=np.uint8), "tb", folder=folder, actor=f"p{offset}")


def test_two_saves_at_once_lose_no_row(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_MODELS_DIR", str(tmp_path / "models"))
    folder = tmp_path / "local"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_save_many, args=(folder, offset, 30)) for offset in (0, 100)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    assert local_set_counts(folder)["Tuberculosis"] == 60  # without the lock, interleaved rewrites lost rows
    assert audit.verify(tmp_path / "models").ok


def test_the_local_set_is_capped_but_corrections_still_work(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("CXR_OUTCOMES_QUOTA", "3")
    folder = tmp_path / "local"
    films = [np.full((16, 16), value, dtype=np.uint8) for value in range(4)]
    for film in films[:3]:
        record_outcome(film, "tb", folder=folder, actor="dashboard:alice")
    with pytest.raises(CxrError, match="full .3 films, the quota is 3"):
        record_outcome(films[3], "tb", folder=folder, actor="dashboard:alice")
    record_outcome(films[0], "not_tb", folder=folder, actor="dashboard:alice")  # a correction is not a new film
    assert local_set_counts(folder) == {"Tuberculosis": 2, "Normal": 1}
    assert not (folder / "films" / f"{film_key(films[3])}.png").exists()
    refused = [e for e in audit.read(tmp_path / "models") if e["outcome"].startswith("refused")]
    assert len(refused) == 1
