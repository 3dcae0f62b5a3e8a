"""The audit trail: one line per model-changing action, from every driver, and a torn line never breaks reading."""

import json

import pytest
from test_store_and_gate import make_candidate

from cxr_core.errors import ModelError
from cxr_core.registry import audit
from cxr_core.registry.store import Registry


def test_promote_and_rollback_each_write_one_line_with_who_and_what(tmp_path):
    reg = Registry(tmp_path / "models")
    a = reg.register(make_candidate(tmp_path, "a"))
    b = reg.register(make_candidate(tmp_path, "b"))
    reg.promote(a, actor="dashboard:session:1")
    reg.promote(b, actor="cli:root")
    assert reg.rollback(actor="dashboard:session:2") == a
    entries = audit.read(reg.root)
    assert [(e["action"], e["version"], e["previous"], e["actor"], e["outcome"]) for e in entries] == [
        ("rollback", a, b, "dashboard:session:2", "ok"),
        ("promote", b, a, "cli:root", "ok"),
        ("promote", a, None, "dashboard:session:1", "ok"),
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


def test_the_log_is_only_appended(tmp_path):
    audit.record("promote", root=tmp_path, version="v1")
    first = audit.audit_path(tmp_path).read_bytes()
    audit.record("rollback", root=tmp_path, version="v0")
    assert audit.audit_path(tmp_path).read_bytes().startswith(first)
    with pytest.raises(ValueError, match="unknown audit action"):
        audit.record("delete_everything", root=tmp_path)
