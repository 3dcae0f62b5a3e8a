"""One corpus of bad and awkward inputs, built here from a real X-ray, through every way in: the core
(``Predictor.screen``), the batch CLI and the dashboard's Screen page.

Every file either scores like the original picture (within 0.05) or is refused with its own message;
nothing crashes or hangs, and the decompression bomb is refused from its header, before any pixel is
inflated, so memory stays bounded.
"""

import csv
import io
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from builders import (
    SVG,
    _corrupt_idat_data_keep_crc,
    _gray_palette_image,
    _png_chunk,
    _rgb,
    _save,
    _synthetic_photo,
    _zip_bytes,
    make_dicom,
)
from conftest import PROJECT_ROOT, shared_records
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import HTJ2KLossless, JPEGLosslessSV1, JPEGLSLossless
from streamlit.testing.v1 import AppTest

from cxr_core.modelling.predictor import Predictor, spreadsheet_safe
from cxr_core.registry.store import Registry
from ui import screening_view

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

APP = str(PROJECT_ROOT / "app.py")
TOLERANCE = 0.05
# A known regression of the evidence-trained networks (v20261202-065311, v20261204-210202): the film upscaled (bicubic) to
# 3,000 px scores about 0.06 away from the original (README, known limits). It must still be scored; its
# probability is held to TOLERANCE by the strict xfail below, which fails the day the model is fixed.
RESAMPLING_SENSITIVE = {"xray-3000x3000.png"}
BOMB_SIDE = 40000
TOO_LARGE = f"image is {BOMB_SIDE}x{BOMB_SIDE} pixels, too large (limit 64 megapixels)"
TRUNCATED = "image file is truncated or corrupt"
PHOTO = "this looks like a colour photograph, not an X-ray"
ZIP = "not an image (looks like a ZIP archive or Office document)"
FORMULA_NAMES = ["=SUM(A1)+cmd.png", "+cmd.png", "-1+2.png", "@SUM(A1).png"]
UNICODE_NAME = "Röntgen Thorax 北京 (1).png"
# Only upload names can hold a "/"; on disk the same bytes are reached through a path argument.
TRAVERSAL_NAME = "../../etc/passwd.png"


# ------------------------------------------------------------------------------------------ builders


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A real 40000x40000 gray PNG: every row is there (zeros), 1.6 GB decoded, ~1.6 MB on disk."""
    deflater = zlib.compressobj(9)
    rows_per_block = 500
    block = bytes((side + 1) * rows_per_block)  # filter byte + pixels, per row
    compressed = [deflater.compress(block) for _ in range(side // rows_per_block)]
    compressed.append(deflater.flush())
    idat = b"".join(compressed)
    header = _png_chunk(b"IHDR", side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0]))
    chunks = b"".join(_png_chunk(b"IDAT", idat[i : i + (1 << 20)]) for i in range(0, len(idat), 1 << 20))
    return b"\x89PNG\r\n\x1a\n" + header + chunks + _png_chunk(b"IEND", b"")


def undecodable_transfer_syntax():
    """A compressed DICOM transfer syntax this installation has no decoder for (name, uid)."""
    for uid, name in (
        (JPEGLSLossless, "JPEG-LS"),
        (HTJ2KLossless, "High-Throughput JPEG 2000"),
        (JPEGLosslessSV1, "JPEG Lossless"),
    ):
        if not get_decoder(uid).is_available:
            return uid, name
    return None, None


def build_corpus(xray: np.ndarray, reference_png: bytes) -> tuple[dict[str, bytes], dict[str, str]]:
    """(file name -> bytes, file name -> expected message); names without a message must score."""
    stored12 = xray.astype(np.uint16) * 16
    large = np.array(Image.fromarray(xray).resize((3000, 3000), Image.Resampling.BICUBIC))
    good = {
        "reference.png": reference_png,
        "xray-16bit.png": _save(Image.fromarray(xray.astype(np.uint16) * 257), "PNG"),
        "xray-palette.png": _save(_gray_palette_image(xray), "PNG"),
        "xray-rgba.png": _save(_rgb(xray).convert("RGBA"), "PNG"),
        "xray-cmyk.jpg": _save(_rgb(xray).convert("CMYK"), "JPEG", quality=95),
        "xray-progressive.jpg": _save(_rgb(xray), "JPEG", quality=95, progressive=True),
        "xray.tiff": _save(Image.fromarray(xray), "TIFF", compression="tiff_lzw"),
        "xray.bmp": _save(Image.fromarray(xray), "BMP"),
        "xray.webp": _save(_rgb(xray), "WEBP", quality=90),
        "xray-3000x3000.png": _save(Image.fromarray(large), "PNG"),
        "dicom-monochrome2.dcm": make_dicom(stored12, window=(2048.0, 4096.0)),
        "dicom-monochrome1.dcm": make_dicom(
            4095 - stored12, photometric="MONOCHROME1", window=(2048.0, 4096.0)
        ),
        "study-without-extension": make_dicom(stored12),
        UNICODE_NAME: reference_png,
        "name with  spaces .png": reference_png,
        **dict.fromkeys(FORMULA_NAMES, reference_png),
    }
    jpeg = _save(Image.fromarray(xray), "JPEG", quality=90)
    full_dicom = make_dicom(stored12, window=(2048.0, 4096.0))
    bad = {
        "empty.png": (b"", "empty file"),
        "notes.png": (b"Chest PA: no acute findings. Follow up in 6 weeks.\n" * 20, "not an image (looks like a text file)"),
        "referral.jpg": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n", "not an image (looks like a PDF document)"),
        "drawing-svg.png": (SVG, "not an image (looks like an SVG drawing)"),
        "archive.png": (_zip_bytes(), ZIP),
        "archive.dcm": (_zip_bytes(), ZIP),
        "truncated.png": (reference_png[: len(reference_png) // 2], TRUNCATED),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], TRUNCATED),
        "corrupt-idat.png": (_corrupt_idat_data_keep_crc(reference_png), TRUNCATED),
        "bomb-40000x40000.png": (bomb_png(), TOO_LARGE),
        "tiny-4x4.png": (_save(Image.fromarray(xray).resize((4, 4)), "PNG"), "image is 4x4 pixels, too small to assess"),
        "flat-gray.png": (_save(Image.fromarray(np.full((512, 512), 128, np.uint8)), "PNG"), "the image is blank or nearly uniform"),
        "holiday-photo.jpg": (_save(Image.fromarray(_synthetic_photo()), "JPEG", quality=90), PHOTO),
        "garden-photo.png": (_save(Image.fromarray(_synthetic_photo(420, 560, seed=3)), "PNG"), PHOTO),
        "dicom-no-pixels.dcm": (make_dicom(None), "DICOM file has no pixel data"),
        "dicom-truncated.dcm": (full_dicom[: len(full_dicom) // 2], "DICOM file is truncated or corrupt"),
    }  # fmt: skip
    uid, name = undecodable_transfer_syntax()
    if uid is not None:
        fake = encapsulate([b"\x00" * 64])
        bad[f"dicom-{name.replace(' ', '-').lower()}.dcm"] = (
            make_dicom(stored12, transfer_syntax=uid, pixel_data=fake),
            f"DICOM uses {name} compression, which this installation cannot decode",
        )
    files = {**good, **{name: data for name, (data, _) in bad.items()}}
    return files, {name: message for name, (_, message) in bad.items()}


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A private copy of the shipped registry (read by a child process and the dashboard)."""
    copy = tmp_path_factory.mktemp("corpus-registry") / "models"
    shutil.copytree(PROJECT_ROOT / "models", copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


@pytest.fixture(scope="module")
def predictor(models) -> Predictor:
    return Predictor(Registry(models).resolve())


@pytest.fixture(scope="module")
def reference(predictor, shared_cxr) -> Path:
    """A real, square TB radiograph whose probability is mid-range, so a drift of 0.05 would show.

    (A film scored 0.997 hides almost any decoding error behind the sigmoid's flat top.)
    """
    paths = [shared_cxr / row["path"] for row in shared_records("tbx11k", "Tuberculosis")[:12]]
    screened = predictor.screen([(str(p), p) for p in paths])
    scored = [
        (abs(item.prediction.probability - 0.5), path) for item, path in zip(screened, paths, strict=True)
    ]
    return min(scored)[1]


@pytest.fixture(scope="module")
def corpus(reference, tmp_path_factory) -> tuple[Path, dict[str, bytes], dict[str, str]]:
    xray = np.array(Image.open(reference))
    assert xray.dtype == np.uint8 and xray.ndim == 2 and xray.shape[0] == xray.shape[1]
    files, refused = build_corpus(xray, reference.read_bytes())
    folder = tmp_path_factory.mktemp("corpus") / "uploads"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    assert len(list(folder.iterdir())) == len(files)
    assert 1_000_000 < len(files["bomb-40000x40000.png"]) < 5_000_000  # "a few MB on disk"
    return folder, files, refused


def check_outcome(name: str, ok: bool, probability, error, refused: dict, reference_probability: float):
    """One file's result against the corpus table; returns a description of any mismatch."""
    if name in refused:
        if ok or error != refused[name]:
            return f"{name}: expected refusal {refused[name]!r}, got ok={ok} error={error!r}"
        return None
    if not ok:
        return f"{name}: expected a score, got error {error!r}"
    if name not in RESAMPLING_SENSITIVE and abs(probability - reference_probability) > TOLERANCE:
        return f"{name}: probability {probability:.4f} vs original {reference_probability:.4f}"
    return None


@pytest.mark.xfail(strict=True, reason="the shipped CAM network reads sharpness as evidence (README; model card)")
def test_the_upscaled_film_scores_like_the_original(predictor, corpus):
    _, files, _ = corpus
    original, upscaled = predictor.screen([(n, files[n]) for n in ("reference.png", "xray-3000x3000.png")])
    assert upscaled.ok
    assert abs(upscaled.prediction.probability - original.prediction.probability) <= TOLERANCE


# ------------------------------------------------------------------------------------------ (a) core


def test_core_scores_every_good_variant_like_the_original_and_refuses_the_rest(predictor, corpus):
    _, files, refused = corpus
    items = list(files.items()) + [(TRAVERSAL_NAME, files["reference.png"])]
    screened = predictor.screen(items)

    assert [item.name for item in screened] == [name for name, _ in items]
    reference_probability = screened[0].prediction.probability
    problems = [
        check_outcome(
            item.name,
            item.ok,
            item.prediction.probability if item.prediction else None,
            item.error,
            refused,
            reference_probability,
        )
        for item in screened
    ]
    assert [p for p in problems if p] == []
    assert sum(item.ok for item in screened) == len(items) - len(refused)


BOMB_PROBE = """
import resource, sys
from cxr_core.modelling.predictor import Predictor
from cxr_core.registry.store import Registry

predictor = Predictor(Registry(sys.argv[2]).resolve())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
[item] = predictor.screen([("bomb.png", sys.argv[1])])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(item.ok, item.error, (after - before) // 1024, sep="|")
"""


def test_the_bomb_is_refused_before_it_is_decoded_with_bounded_memory(corpus, models):
    """In a fresh process, so the peak resident size belongs to this file alone (1.6 GB if inflated)."""
    folder, _, _ = corpus
    result = subprocess.run(
        [sys.executable, "-c", BOMB_PROBE, str(folder / "bomb-40000x40000.png"), str(models)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ok, error, growth_mb = result.stdout.strip().splitlines()[-1].split("|")
    assert ok == "False" and error == TOO_LARGE
    assert int(growth_mb) < 100, f"peak memory grew by {growth_mb} MB while refusing the bomb"


# ------------------------------------------------------------------------------------------ (b) CLI


def test_cli_writes_one_row_per_file_with_its_own_message_and_safe_names(corpus, models):
    folder, files, refused = corpus
    result = subprocess.run(
        [sys.executable, "-m", "cxr_core", "predict", ".", "--format", "csv"],
        cwd=folder,  # relative names, so a formula-like name starts its cell as a spreadsheet sees it
        env={
            **os.environ,
            "PYTHONPATH": str(PROJECT_ROOT),
            "CXR_MODELS_DIR": str(models),
            "TF_CPP_MIN_LOG_LEVEL": "3",
        },
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == len(files)
    assert sorted(row["file"] for row in rows) == sorted(spreadsheet_safe(name) for name in files)
    for name in FORMULA_NAMES:
        assert "'" + name in {row["file"] for row in rows}
    assert not [v for row in rows for v in row.values() if v.startswith(("=", "+", "-", "@"))]

    by_name = {row["file"].removeprefix("'"): row for row in rows}
    reference_probability = float(by_name["reference.png"]["probability"])
    problems = [
        check_outcome(
            name,
            row["ok"] == "True",
            float(row["probability"]) if row["probability"] else None,
            row["error"] or None,
            refused,
            reference_probability,
        )
        for name, row in by_name.items()
    ]
    assert [p for p in problems if p] == []


# ------------------------------------------------------------------------------------------ (c) dashboard


def unescaped(elements) -> list[str]:
    return [element.value.replace("\\", "") for element in elements]


def test_dashboard_shows_a_result_or_its_message_for_every_file_of_one_batch(
    corpus, models, monkeypatch, tmp_path
):
    _, files, refused = corpus
    monkeypatch.setenv("CXR_MODELS_DIR", str(models))
    monkeypatch.setenv("CXR_JOBS_DIR", str(tmp_path / "jobs"))
    offered = []
    real_csv = screening_view.summary_csv
    monkeypatch.setattr(
        screening_view, "summary_csv", lambda rows: offered.append(real_csv(rows)) or offered[-1]
    )

    uploads = list(files.items()) + [(TRAVERSAL_NAME, files["reference.png"])]
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.checkbox(key="include_ids").check()  # file names shown (with identity off films are film-01, ...)
    at.run()
    at.file_uploader(key="uploads").set_value(
        [(name, data, "application/octet-stream") for name, data in uploads]
    )
    at.run()

    assert not at.exception, [e.value for e in at.exception]
    distinct = screening_view.dedupe_uploads(uploads)[0]  # the same content twice is one film (worklist)
    names = [upload.name for upload in distinct]
    refused_here = {name: message for name, message in refused.items() if name in names}
    counts = {m.label: m.value for m in at.metric}
    assert counts["Images"] == str(len(distinct)) and counts["Unreadable"] == str(len(refused_here))
    listing = " ".join(unescaped(at.markdown) + unescaped(at.error) + unescaped(at.warning))
    for name, message in refused_here.items():
        assert f"{name}**: {message}" in listing or f"{name}** could not be screened: {message}" in listing, (
            name
        )

    table = at.dataframe[0].value
    assert sorted(table["file"]) == sorted(names)  # every film has its row (in risk order, not upload order)
    reference_probability = float(table.set_index("file").loc["reference.png", "tb_probability"])
    problems = [
        check_outcome(
            row["file"],
            row["result"] != screening_view.DECISION_FAILED,
            float(row["tb_probability"]) if row["tb_probability"] else None,
            row["problem"] or None,
            refused,
            reference_probability,
        )
        for row in table.to_dict("records")
    ]
    assert [p for p in problems if p] == []

    assert offered, "the page offers no CSV download"
    exported = list(csv.DictReader(io.StringIO(offered[-1].decode("utf-8-sig"))))
    assert len(exported) == len(distinct)
    assert not [v for row in exported for v in row.values() if v.startswith(("=", "+", "-", "@"))]
    assert {"'" + name for name in FORMULA_NAMES if name in names} <= {row["file"] for row in exported}
