"""The dashboard as a real server: ``streamlit run app.py`` on a free local port.

Used by the browser tests and by ``bench/page.py`` (which imports it as ``tests.servers``), so the
one way to start, wait for and stop the server lives here.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench.ports import free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent
try:  # one lookup for every browser test
    from tools import CHROMIUM  # noqa: F401
except ModuleNotFoundError:  # imported as tests.servers (bench/page.py runs outside pytest)
    from tests.tools import CHROMIUM  # noqa: F401

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextlib.contextmanager
def running_dashboard(log_path: Path, env: dict[str, str], timeout: float = 60) -> Iterator[str]:
    """Start the server in its own process group (run from the project, so .streamlit/config.toml
    applies), wait for its health check, yield its URL, and stop the whole group afterwards."""
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
            + ["--server.address", "127.0.0.1", "--server.port", str(port)]
            + ["--browser.gatherUsageStats", "false"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                with contextlib.suppress(OSError):
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    log_tail = Path(log_path).read_text(errors="replace")[-4000:]
                    raise RuntimeError(f"the dashboard did not start:\n{log_tail}")
                time.sleep(0.3)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
