"""The audit trail: one line per model-changing action, from every driver, and a torn line never breaks reading."""

import json

import pytest
from gatekeeping import promote_for_setup
from test_store_and_gate import make_candidate

from cxr_core.errors import ModelError
from cxr_core.registry import audit
from cxr_core.registry.store import Registry


def test_promote_and_rollback_each_write_one_line_with_who_and_what(tmp_path):
    reg = Registry(tmp_path / "models")
    a = reg.register(make_candidate(tmp_path, "a"))
    b = reg.register(make_candidate(tmp_path, "b"))
    promote_for_setup(reg, a, actor="dashboard:alice")
    promote_for_setup(reg, b, actor="cli:root")
    assert reg.rollback(actor="dashboard:session:2") == a
    entries = audit.read(reg.root)
    assert [(e["action"], e["version"], e["previous"], e["actor"], e["outcome"]) for e in entries] == [
        ("rollback", a, b, "dashboard:session:2", "ok"),
        ("promote", b, a, "cli:root", "ok"),
        ("promote", a, None, "dashboard:alice", "ok"),
    ]
    assert all(e["time"].endswith("+00:00") for e in entries)


def test_refused_actions_are_recorded_too(tmp_path):
    reg = Registry(tmp_path / "models")
    with pytest.raises(ModelError):
        reg.rollback(actor="x")
    with pytest.raises(ModelError):
        reg.promote("v-does-not-exist", actor="y")
    actions = [(e["action"], e["outcome"].split(":")[0]) for e in audit.read(reg.root)]
    assert actions == [("promote", "refused"), ("rollback", "refused")]


def test_a_torn_last_line_does_not_break_reading(tmp_path):
    audit.record("promote", root=tmp_path, version="v1", actor="a")
    audit.record("rollback", root=tmp_path, version="v0", actor="b")
    with open(audit.audit_path(tmp_path), "ab") as handle:
        handle.write(b'{"time": "2026-11-30T00:00:00+00:00", "action": "prom')  # the process died mid-write
    assert [e["action"] for e in audit.read(tmp_path)] == ["rollback", "promote"]
    audit.record(
        "promote", root=tmp_path, version="v2", actor="c"
    )  # appending after it still works, on its own line
    lines = audit.audit_path(tmp_path).read_text().splitlines()
    assert json.loads(lines[-1])["version"] == "v2" and len(audit.read(tmp_path)) == 3
    report = audit.verify(tmp_path)  # a crash is told apart from an edit: the chain still holds
    assert report.ok and report.notes == ["1 line(s) cut short by a crash"], report


def test_the_log_is_only_appended(tmp_path):
    audit.record("promote", root=tmp_path, version="v1")
    first = audit.audit_path(tmp_path).read_bytes()
    audit.record("rollback", root=tmp_path, version="v0")
    assert audit.audit_path(tmp_path).read_bytes().startswith(first)
    with pytest.raises(ValueError, match="unknown audit action"):
        audit.record("delete_everything", root=tmp_path)


def _chain(tmp_path, n=5):
    for i in range(n):
        audit.record("promote", root=tmp_path, version=f"v{i}", actor=f"user{i}")
    return audit.audit_path(tmp_path)


def test_every_line_links_to_the_one_before_it(tmp_path):
    path = _chain(tmp_path)
    lines = path.read_bytes().splitlines()
    assert json.loads(lines[0])["prev"] == audit.GENESIS
    for before, after in zip(lines, lines[1:], strict=False):
        assert json.loads(after)["prev"] == audit.line_hash(before)
    report = audit.verify(tmp_path)
    assert report.ok and report.lines == 5 and report.broken_at is None
    assert oct(path.stat().st_mode & 0o777) in ("0o660", "0o640", "0o600")  # not world-readable


@pytest.mark.parametrize(
    "tamper, broken_at, words",
    [
        (lambda lines: lines[:2] + [lines[2].replace(b"user2", b"mallory")] + lines[3:], 4, "line 3"),
        (lambda lines: lines[:1] + lines[2:], 2, "line 1"),  # a line deleted
        (lambda lines: lines[1:], 1, "first line"),  # the oldest lines removed
        (lambda lines: lines[:3] + [lines[4], lines[3]], 4, "line 3"),  # re-ordered
        (lambda lines: lines[:2] + [b"garbage"] + lines[3:], 3, "not a complete audit entry"),
    ],
)
def test_verify_names_the_first_broken_link(tmp_path, tamper, broken_at, words):
    path = _chain(tmp_path)
    path.write_bytes(b"\n".join(tamper(path.read_bytes().splitlines())) + b"\n")
    report = audit.verify(tmp_path)
    assert not report.ok and report.broken_at == broken_at and words in report.reason, report
    assert f"broken at line {broken_at}" in report.message()


def test_audit_verify_command_reports_the_break_and_exits_non_zero(tmp_path):
    import subprocess
    import sys

    path = _chain(tmp_path, 3)
    command = [sys.executable, "-m", "cxr_core", "audit", "verify", "--root", str(tmp_path)]
    ok = subprocess.run(command, capture_output=True, text=True)
    assert ok.returncode == 0 and "holds: 3 lines" in ok.stdout
    path.write_bytes(path.read_bytes().replace(b"user1", b"user9"))
    broken = subprocess.run(command, capture_output=True, text=True)
    assert broken.returncode == 1 and "broken at line 3" in broken.stdout, broken.stdout


def test_concurrent_writers_keep_one_chain(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path), n)) for n in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    report = audit.verify(tmp_path)
    assert report.ok and report.lines == 4 * 25, report


def _write_many(root, n):
    for i in range(25):
        audit.record("register", root=root, version=f"w{n}-{i}")
