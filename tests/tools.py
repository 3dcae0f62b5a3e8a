"""Where the tests find outside tools, and what happens when one is missing.

A test that needs a browser, the docker CLI, hadolint or Airflow skips with the reason on a developer's
machine, but fails under ``CI=true``: a CI run that quietly skipped the browser tests would be green
without having tested the browser.
"""

import os
import shutil
from pathlib import Path

import pytest

TRUE_WORDS = ("1", "true", "yes", "on")


def under_ci() -> bool:
    """``CI`` read as a boolean: ``CI=true`` (what .ci/run exports) is CI, ``CI=false`` or ``CI=0`` is not."""
    return os.environ.get("CI", "").strip().lower() in TRUE_WORDS


# The same lookup scripts/test.sh makes before installing Debian's chromium.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def missing(what: str) -> None:
    if under_ci():
        pytest.fail(f"{what}; CI installs every tool the tests need, so this is a broken setup")
    pytest.skip(what)


def need_chromium() -> str:
    if not Path(CHROMIUM).exists():
        missing("Debian chromium is not installed (apt install chromium)")
    return CHROMIUM
