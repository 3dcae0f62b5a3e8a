"""Datasets come only from the configured roots, and an uploaded .zip is checked before it is kept."""

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cxr_core.errors import DatasetError
from cxr_core.pipeline.dataset_roots import MAX_UPLOAD_BYTES, allowed_dataset_path, save_uploaded_zip

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def roots(tmp_path, monkeypatch):
    allowed = tmp_path / "datasets"
    (allowed / "kaggle" / "Normal").mkdir(parents=True)
    uploads = tmp_path / "uploads"
    monkeypatch.setenv("CXR_DATASET_ROOTS", f"{allowed}{os.pathsep}{uploads}")
    monkeypatch.setenv("CXR_UPLOADS_DIR", str(uploads))
    return allowed, uploads


@pytest.mark.parametrize("outside", ["/etc", "~", "../../..", "/", "/nonexistent/secret"])
def test_paths_outside_the_roots_are_refused_without_saying_what_exists(roots, outside):
    with pytest.raises(DatasetError) as refused:
        allowed_dataset_path(outside)
    message = str(refused.value)
    assert "configured dataset folders" in message
    assert "no dataset" not in message and "is a file" not in message  # existence is not revealed


def test_climbing_out_through_dots_or_a_symlink_is_refused(roots, tmp_path):
    allowed, _ = roots
    (allowed / "escape").symlink_to(tmp_path.parent)
    for text in (f"{allowed}/../../etc", f"{allowed}/escape"):
        with pytest.raises(DatasetError, match="configured dataset folders"):
            allowed_dataset_path(text)


def test_inside_the_roots_the_dataset_is_found_or_named_as_missing(roots):
    allowed, _ = roots
    assert allowed_dataset_path(allowed / "kaggle") == (allowed / "kaggle").resolve()
    with pytest.raises(DatasetError, match="There is no dataset at"):
        allowed_dataset_path(allowed / "missing")


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_an_uploaded_zip_is_kept_in_the_uploads_root_and_is_then_an_allowed_dataset(roots):
    _, uploads = roots
    saved = save_uploaded_zip(
        _zip({"Normal/a.png": b"x" * 100, "Tuberculosis/b.png": b"y" * 100}), "My set.zip"
    )
    assert saved.parent == uploads and saved.name.startswith("My_set-") and saved.suffix == ".zip"
    assert allowed_dataset_path(saved) == saved.resolve()
    assert not list(uploads.glob(".*.tmp"))


@pytest.mark.parametrize(
    "archive, message",
    [
        (_zip({"../../evil.png": b"x"}), "outside itself"),
        (_zip({"/etc/passwd": b"x"}), "outside itself"),
        (_zip({"Normal/bomb.png": b"\0" * 5_000_000}, zipfile.ZIP_DEFLATED), "zip bomb"),
        (b"PK\x03\x04 not really a zip", "not a readable .zip"),
        (b"%PDF-1.7", "not a readable .zip"),
    ],
    ids=["dotdot", "absolute", "bomb", "truncated", "pdf"],
)
def test_unsafe_uploads_are_refused_and_nothing_is_kept(roots, archive, message):
    _, uploads = roots
    with pytest.raises(DatasetError, match=message):
        save_uploaded_zip(archive, "upload.zip")
    assert not uploads.exists() or not list(uploads.iterdir())


def test_an_upload_over_the_size_cap_is_refused(roots):
    with pytest.raises(DatasetError, match="larger than"):
        save_uploaded_zip(b"\0" * (MAX_UPLOAD_BYTES + 1), "big.zip")


def test_the_cli_pipeline_refuses_a_dataset_outside_the_roots(roots, tmp_path):
    env = {**os.environ}
    done = subprocess.run(
        [sys.executable, "-m", "cxr_core", "pipeline", "--data", "/etc", "--work", str(tmp_path / "w")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "configured dataset folders" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "w").exists()


def test_a_models_recorded_dataset_is_found_again_under_a_configured_root(roots, tmp_path):
    """A model trained beside ``../shared/data/cxr`` and deployed where the data is mounted elsewhere
    (the container's ``/data``) still finds its test films; only inside the allowed roots, and only a
    folder that holds the model's own films."""
    from cxr_core.pipeline.dataset_roots import locate_recorded_dataset

    allowed, _ = roots
    (allowed / "kaggle" / "Normal" / "n1.png").write_bytes(b"film")
    assert locate_recorded_dataset(str(allowed / "kaggle")) == allowed / "kaggle"  # where it was recorded
    (allowed / "data" / "cxr").mkdir(parents=True)
    assert locate_recorded_dataset("../elsewhere/data/cxr") == allowed / "data" / "cxr"  # the longest tail first
    assert locate_recorded_dataset("/mnt/old-disk/kaggle", holds=("Normal/n1.png",)) == allowed / "kaggle"
    assert locate_recorded_dataset("D:\\old-disk\\kaggle") == allowed / "kaggle"  # recorded on Windows
    assert locate_recorded_dataset("..\\shared\\data\\cxr") == allowed / "data" / "cxr"
    # another dataset that merely shares the folder's name is not taken for the model's
    assert locate_recorded_dataset("/mnt/old-disk/kaggle", holds=("Normal/other.png",)) is None
    # a folder of that name outside the roots, or reached from a root by a symlink out of it, is not looked in
    outside = tmp_path / "not-a-root" / "lost"
    outside.mkdir(parents=True)
    assert locate_recorded_dataset("/mnt/old-disk/lost") is None
    (allowed / "lost").symlink_to(outside)
    assert locate_recorded_dataset("/mnt/old-disk/lost") is None
    assert locate_recorded_dataset("/no-such-disk/kaggle/..") is None  # ``root/..`` exists: the folder above the root
    assert locate_recorded_dataset(None) is None and locate_recorded_dataset("") is None
