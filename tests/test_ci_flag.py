"""``CI`` is a boolean: under ``CI=true`` a missing tool fails the run, and ``CI=false`` is not CI."""

import subprocess
from pathlib import Path

import pytest
from tools import missing, under_ci

PROJECT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "value, expected",
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("false", False), ("0", False), ("", False),
     ("no", False), ("False", False)],
)  # fmt: skip
def test_ci_is_read_as_a_boolean(monkeypatch, value, expected):
    monkeypatch.setenv("CI", value)
    assert under_ci() is expected


def test_a_missing_tool_skips_when_ci_is_false_and_fails_when_true(monkeypatch):
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        missing("a tool")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        missing("a tool")


def test_ci_run_exports_ci_true_before_the_tests():
    script = (PROJECT / ".ci" / "run").read_text()
    lines = [line.strip() for line in script.splitlines()]
    assert "export CI=true" in lines
    assert lines.index("export CI=true") < next(i for i, line in enumerate(lines) if "scripts/test.sh" in line)
    checked = subprocess.run(["bash", "-n", str(PROJECT / ".ci" / "run")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_no_test_reads_ci_as_a_bare_truthy_string():
    """``os.environ.get("CI")`` is truthy for "false": every reader goes through ``under_ci``."""
    offenders = []
    for path in [*PROJECT.glob("tests/**/*.py"), *PROJECT.glob("bench/*.py"), *PROJECT.glob("scripts/*.py")]:
        text = path.read_text()
        if 'environ.get("CI")' in text.replace("'", '"') and path.name != "test_ci_flag.py":
            offenders.append(str(path.relative_to(PROJECT)))
    assert offenders == []
