"""Crash-safe writing: whole outputs or none, and files other users (the dashboard in Docker) can read."""

import json
import os
import stat

import pytest

from cxr_core.fsutil import atomic_directory, write_json_atomic


def test_json_is_replaced_whole_and_readable_by_others(tmp_path):
    target = tmp_path / "status.json"
    old_umask = os.umask(0o022)  # the usual umask, set here so the check below always runs
    try:
        write_json_atomic(target, {"state": "running"})
        write_json_atomic(target, {"state": "succeeded"})
    finally:
        os.umask(old_umask)
    assert json.loads(target.read_text()) == {"state": "succeeded"}
    assert stat.S_IMODE(target.stat().st_mode) & 0o044 == 0o044  # a temp file's 0600 would hide it from others
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"], "no temporary files left behind"


def test_json_refuses_nan_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"auc": 0.9})
    with pytest.raises(ValueError):
        write_json_atomic(target, {"auc": float("nan")})
    assert json.loads(target.read_text()) == {"auc": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_directory_is_swapped_only_when_complete(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("crash mid-stage")
    assert (target / "a.txt").read_text() == "first"
    with atomic_directory(target) as staging:
        (staging / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
