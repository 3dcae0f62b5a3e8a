"""A real Orthanc and a real screening node, started with ``scripts/pacs.sh`` on free local ports.

Used by the node tests and by ``bench/pacs.py`` (imported there as ``tests.node.pacs_harness``), so the
one way to start, feed, watch and stop the PACS lives here. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from bench.ports import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACS_SCRIPT = PROJECT_ROOT / "scripts" / "pacs.sh"
PYTHON = PROJECT_ROOT / ".venv" / "bin" / "python"


def orthanc_missing() -> str | None:
    if shutil.which("Orthanc") is None and not Path("/usr/sbin/Orthanc").exists():
        return "Debian's orthanc is not installed (scripts/test.sh installs it; apt-get install orthanc)"
    return None


class Pacs:
    """One Orthanc + node pair in ``folder``; ``up()`` / ``down()`` run scripts/pacs.sh."""

    def __init__(self, folder: Path, node_args: str = ""):
        self.folder = Path(folder)
        self.dicom_port, self.http_port, self.node_port = free_port(), free_port(), free_port()
        self.node_dir = self.folder / "node"
        self.node_args = node_args
        self.url = f"http://127.0.0.1:{self.http_port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CXR_PACS_DIR": str(self.folder),
            "CXR_NODE_DIR": str(self.node_dir),
            "PACS_DICOM_PORT": str(self.dicom_port),
            "PACS_HTTP_PORT": str(self.http_port),
            "NODE_PORT": str(self.node_port),
            "NODE_ARGS": self.node_args,
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }

    def script(self, action: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(PACS_SCRIPT), action], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def up(self) -> None:
        done = self.script("up")
        if done.returncode != 0:
            raise RuntimeError(f"scripts/pacs.sh up failed:\n{done.stdout}\n{done.stderr}")

    def down(self) -> None:
        self.script("down", timeout=120)

    # ------------------------------------------------------------------------------ processes
    def pid(self, name: str) -> int:
        return int((self.folder / f"{name}.pid").read_text())

    def kill(self, name: str, signum: int = signal.SIGKILL, timeout: float = 30) -> None:
        """Stop Orthanc or the node the hard way (or with ``signum``) and wait until it is gone."""
        pid = self.pid(name)
        os.kill(pid, signum)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{name} (pid {pid}) did not stop")

    # ------------------------------------------------------------------------------ Orthanc REST
    @property
    def auth(self) -> tuple[str, str]:
        user, _, password = (self.folder / "rest-credentials").read_text().strip().partition(":")
        return user, password

    def rest(self, method: str, path: str, **kwargs):
        response = requests.request(method, self.url + path, auth=self.auth, timeout=30, **kwargs)
        response.raise_for_status()
        return response

    def upload(self, data: bytes) -> dict:
        """A film into Orthanc as a modality's export would arrive (REST upload; the Lua script forwards it)."""
        return self.rest("POST", "/instances", data=data).json()

    def study_instances(self, study_uid: str) -> dict[str, list[str]]:
        """Orthanc instance ids of a study, per modality (DX, SR, OT...)."""
        found = self.rest(
            "POST",
            "/tools/find",
            json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
        ).json()
        result: dict[str, list[str]] = {}
        for series in found:
            result.setdefault(series["MainDicomTags"].get("Modality", ""), []).extend(series["Instances"])
        return result

    def instance_file(self, instance_id: str) -> bytes:
        return self.rest("GET", f"/instances/{instance_id}/file").content

    def failed_jobs(self) -> list[dict]:
        return [job for job in self.rest("GET", "/jobs?expand").json() if job.get("State") == "Failure"]

    # ------------------------------------------------------------------------------ the node
    def queue(self):
        from cxr_core.node.queue import FilmQueue

        return FilmQueue(self.node_dir)

    def rows_for(self, sop_uids) -> list[dict]:
        wanted = set(sop_uids)
        return [row for row in self.queue().rows(limit=100000) if row["sop_uid"] in wanted]

    def wait_rows(self, sop_uids, predicate, timeout: float = 180, poll: float = 0.1) -> list[dict]:
        """Wait until ``predicate(rows of these films)`` holds; the rows, or an error with the last state."""
        deadline = time.monotonic() + timeout
        rows: list[dict] = []
        while time.monotonic() < deadline:
            rows = self.rows_for(sop_uids)
            if predicate(rows):
                return rows
            time.sleep(poll)
        states = [(row["id"], row["state"], row["last_error"]) for row in rows]
        log = (self.folder / "node.log").read_text()[-3000:] if (self.folder / "node.log").exists() else ""
        raise TimeoutError(f"node queue never got there: {states}\n{log}")

    def node_status(self) -> dict:
        done = subprocess.run(
            [str(PYTHON), "-m", "cxr_core", "node", "--status"],
            env={**self.env}, capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT,
        )  # fmt: skip
        return json.loads(done.stdout[done.stdout.index("{") :])


# ---------------------------------------------------------------------------------- films


def unseen_films(shared_cxr: Path, count: int) -> list[Path]:
    """Real films from the current model's test split (never trained on), TB and normal alternating."""
    from cxr_core.registry.store import Registry
    from cxr_core.settings import Layout

    model_dir, _ = Registry().resolve_with_warning(None)
    with open(model_dir / Layout.PREDICTIONS, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if not row.get("member")]
    by_label = [[r for r in rows if r["label"] == label] for label in ("1", "0")]
    chosen = [row for pair in zip(*by_label, strict=False) for row in pair][:count]
    return [shared_cxr / row["path"] for row in chosen]


def film_bytes(path: Path, study_uid: str, sop_uid: str, **options) -> bytes:
    """A shared PNG/JPEG film as the DX instance a modality would send (8-bit MONOCHROME2)."""
    from builders import make_dx_film

    pixels = np.array(Image.open(path).convert("L"))
    return make_dx_film(pixels, study_uid=study_uid, sop_uid=sop_uid, **options)


def new_uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid(prefix=None)
