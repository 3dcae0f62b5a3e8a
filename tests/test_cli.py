"""``python -m cxr_core`` as a user runs it: a real subprocess, real files, the shipped model (read only)."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import make_dicom
from conftest import PROJECT_ROOT, shared_records
from PIL import Image

from cxr_core.registry.store import Registry

# POSIX file names cannot contain "/", so this one is a folder "=cmd|' " holding "C calc'!A0.png":
# listed from the folder above, its path is exactly the classic CSV-injection payload.
FORMULA_NAME = "=cmd|' /C calc'!A0.png"
UNICODE_NAME = "Röntgen Thorax 北京 (1).png"
GOOD = ["tb.png", "tb-reencoded.jpg", "normal.dcm", FORMULA_NAME, UNICODE_NAME]
BAD = {  # file -> words its message must contain
    "empty.png": "empty",
    "cut.png": "truncated",
    "report.dcm": "not an image",
}


def _run(*args: str, cwd: Path = PROJECT_ROOT, **env) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "CXR_MODELS_DIR": str(PROJECT_ROOT / "models"),
        "PYTHONPATH": str(PROJECT_ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "cxr_core", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory, shared_cxr) -> Path:
    root = tmp_path_factory.mktemp("cli") / "scans"
    (root / FORMULA_NAME).parent.mkdir(parents=True)
    tb = shared_cxr / shared_records("tbx11k", "Tuberculosis")[0]["path"]
    normal = shared_cxr / shared_records("openist", "Normal")[1]["path"]
    shutil.copy(tb, root / "tb.png")
    Image.open(tb).convert("L").save(root / "tb-reencoded.jpg", quality=90)
    (root / "normal.dcm").write_bytes(
        make_dicom(np.array(Image.open(normal).convert("L")).astype(np.uint16) * 16)
    )
    shutil.copy(shared_cxr / shared_records("tbx11k", "Tuberculosis")[1]["path"], root / FORMULA_NAME)
    shutil.copy(shared_cxr / shared_records("shenzhen", "Normal")[0]["path"], root / UNICODE_NAME)
    (root / "empty.png").write_bytes(b"")
    data = tb.read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 3])
    (root / "report.dcm").write_text("Radiology report\nNo acute findings.\n")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == sorted(GOOD + list(BAD))
    return root


@pytest.fixture(scope="module")
def jsonl_run(folder) -> tuple[subprocess.CompletedProcess, list[dict]]:
    result = _run("predict", str(folder))
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result, rows


def test_predict_gives_one_row_per_file_and_exit_code_0(folder, jsonl_run):
    result, rows = jsonl_run
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    names = [Path(row["file"]).relative_to(folder).as_posix() for row in rows]
    assert sorted(names) == sorted(GOOD + list(BAD))
    assert len(names) == len(set(names))


def test_predict_rows_for_good_and_bad_files(folder, jsonl_run):
    _, rows = jsonl_run
    by_name = {Path(row["file"]).relative_to(folder).as_posix(): row for row in rows}
    current = Registry(PROJECT_ROOT / "models").current_version()
    threshold = json.loads((PROJECT_ROOT / "models" / current / "metadata.json").read_text())["threshold"]
    for name in GOOD:
        row = by_name[name]
        assert row["ok"] is True and row["error"] is None, (name, row)
        assert 0.0 <= row["probability"] <= 1.0
        assert row["label"] == ("Tuberculosis" if row["probability"] >= threshold else "Normal")
        assert row["threshold"] == threshold and row["model_version"] == current
    for name, words in BAD.items():
        row = by_name[name]
        assert row["ok"] is False and row["probability"] is None and row["label"] is None, (name, row)
        assert words in row["error"], (name, row["error"])
    # The PNG and its JPEG re-encode get the same call.
    assert abs(by_name["tb.png"]["probability"] - by_name["tb-reencoded.jpg"]["probability"]) < 0.05


def test_predict_csv_to_a_file_neutralises_formula_file_names(folder, tmp_path):
    """Run from inside the folder (``.``), so file names start the cell as a spreadsheet would see them."""
    output = tmp_path / "results.csv"
    result = _run("predict", ".", "--format", "csv", "--output", str(output), cwd=folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "", "with --output nothing goes to standard output"
    with open(output, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(GOOD) + len(BAD)
    files = {row["file"] for row in rows}
    assert "'" + FORMULA_NAME in files and FORMULA_NAME not in files
    assert UNICODE_NAME in files, "ordinary (unicode) names are written unchanged"
    assert not any(value.startswith(("=", "+", "-", "@")) for row in rows for value in row.values())
    formula_row = next(row for row in rows if row["file"] == "'" + FORMULA_NAME)
    assert formula_row["ok"] == "True" and 0.0 <= float(formula_row["probability"]) <= 1.0


def test_predict_missing_path_exits_2_with_a_clear_message(tmp_path):
    missing = tmp_path / "no-such-folder"
    result = _run("predict", str(missing))
    assert result.returncode == 2
    assert "no such file or folder" in result.stderr and str(missing) in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_predict_unknown_model_exits_2_with_a_clear_message(folder):
    result = _run("predict", str(folder / "tb.png"), "--model", "v19990101-000000")
    assert result.returncode == 2
    assert "v19990101-000000" in result.stderr and "No model version" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_predict_unwritable_output_exits_2_with_a_clear_message(folder, tmp_path):
    target = tmp_path / "no-such-dir" / "out.csv"
    result = _run("predict", str(folder / "tb.png"), "--output", str(target))
    assert result.returncode == 2, result.stderr
    assert "cannot write" in result.stderr and str(target) in result.stderr
    assert "Traceback" not in result.stderr
    assert not target.parent.exists()


def test_models_list_marks_the_current_version():
    current = Registry(PROJECT_ROOT / "models").current_version()
    result = _run("models", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    starred = [line for line in lines if line.startswith("*")]
    assert len(starred) == 1 and starred[0].split()[1] == current
    assert "threshold" in starred[0] and "AUC" in starred[0]
