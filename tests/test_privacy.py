"""Access and privacy: patient identifiers from DICOM headers stay out of CLI output, exports and job logs
unless a user opts in; uploads are capped in size; models load in Keras safe mode and only from the
registry or a checksum-verified folder; changing the served model needs the admin password.
"""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from builders import make_dicom
from gatekeeping import PASSWORD, admin_account, promote_for_setup
from PIL import Image
from servers import CHROMIUM, CHROMIUM_ARGS, running_dashboard
from streamlit.testing.v1 import AppTest
from test_app_retrain import unlock
from tools import need_chromium

from cxr_core import auth
from cxr_core.errors import ModelError
from cxr_core.fsutil import write_json_atomic
from cxr_core.modelling.predictor import Predictor
from cxr_core.pipeline import jobs
from cxr_core.registry.gate import policy_stamp
from cxr_core.registry.store import Registry, sha256_file
from cxr_core.settings import load_params
from ui import screening_view

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
APP = str(PROJECT_ROOT / "app.py")
SAMPLE = PROJECT_ROOT / "data" / "sample"
XRAY = SAMPLE / "Normal" / "CHNCXR_0001_0.png"
IDENTIFIERS = ("Doe^Jane", "Doe", "MRN-0042", "19700101")  # what make_dicom writes into every header
MARKER_ENV = "CXR_TEST_MARKER"


def dicom_of(path: Path) -> bytes:
    """A 12-bit MONOCHROME2 DICOM of a real X-ray, with the patient's name, ID and birth date."""
    return make_dicom(np.array(Image.open(path).convert("L")).astype(np.uint16) * 16)


def leaks(text: str | bytes) -> list[str]:
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    return [value for value in IDENTIFIERS if value.encode() in data]


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Registry:
    models = tmp_path / "models"
    shutil.copytree(PROJECT_ROOT / "models", models, ignore=shutil.ignore_patterns(".lock"))
    monkeypatch.setenv("CXR_MODELS_DIR", str(models))
    monkeypatch.setenv("CXR_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.delenv(auth.ENV_PASSWORD, raising=False)
    monkeypatch.setenv("CXR_SECRETS_FILE", str(tmp_path / "no-secrets.toml"))
    monkeypatch.setenv("CXR_USERS_FILE", str(tmp_path / "no-admin-users.toml"))
    return Registry(models)


def run_cli(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cxr_core", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )


# ------------------------------------------------------------------------------ patient identifiers


def test_cli_output_never_carries_patient_identifiers(registry, tmp_path):
    folder = tmp_path / "studies"
    folder.mkdir()
    (folder / "study1.dcm").write_bytes(dicom_of(XRAY))
    (folder / "study2").write_bytes(dicom_of(SAMPLE / "Tuberculosis" / "tb0063.png"))
    (folder / "no-pixels.dcm").write_bytes(make_dicom(None))  # a refused file names no patient either
    for fmt in ("jsonl", "csv"):
        result = run_cli("predict", str(folder), "--format", fmt)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.count("study") == 2 and "DICOM file has no pixel data" in result.stdout
        assert leaks(result.stdout) == [] and leaks(result.stderr) == [], fmt


def test_dashboard_export_holds_identifiers_only_after_opting_in(registry, monkeypatch):
    offered: list[bytes] = []
    real_csv = screening_view.summary_csv
    monkeypatch.setattr(
        screening_view, "summary_csv", lambda rows: offered.append(real_csv(rows)) or offered[-1]
    )
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.file_uploader(key="uploads").set_value(
        [
            ("study.dcm", dicom_of(XRAY), "application/dicom"),
            ("empty.dcm", make_dicom(None), "application/dicom"),
        ]
    )
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [m.label for m in at.metric].count("TB probability") == 1

    page = " ".join(str(e.value) for e in [*at.markdown, *at.error, *at.warning, *at.caption])
    assert leaks(page) == [] and leaks(at.dataframe[0].value.to_csv()) == []
    assert leaks(offered[-1]) == [], "identifiers in the CSV download without opting in"
    header = offered[-1].decode("utf-8-sig").splitlines()[0]
    assert "patient" not in header and "patient" not in " ".join(at.dataframe[0].value.columns)
    assert leaks(json.dumps(at.session_state["screen_memo"]["items"][0].image.metadata)) == []

    optin = next(c for c in at.checkbox if c.label.startswith("Show patient identity"))
    assert optin.value is False, "identifiers must be off by default"
    optin.check()
    at.run()
    exported = list(csv.DictReader(io.StringIO(offered[-1].decode("utf-8-sig"))))
    assert exported[0]["patient_name"] == "Doe, Jane" and exported[0]["patient_id"] == "MRN-0042"


def test_job_logs_and_training_artifacts_hold_no_patient_identifiers(registry, tmp_path):
    """Part of the training set is DICOM with identifiers, one of them unreadable (so it is logged)."""
    data = tmp_path / "dataset"
    for label in ("Normal", "Tuberculosis"):
        shutil.copytree(SAMPLE / label, data / label)
        for path in sorted((data / label).glob("*.png"))[:2]:
            path.with_suffix(".dcm").write_bytes(dicom_of(path))
            path.unlink()
    (data / "Normal" / "broken.dcm").write_bytes(make_dicom(None))
    params = load_params()
    params["train"].update(epochs=1, patience=1)
    params["evaluate"]["n_boot"] = 50

    job_id = jobs.start_job(data, params, models_root=registry.root, promote="never")
    deadline = time.monotonic() + 300
    while jobs.job_status(job_id)["state"] in jobs.ACTIVE and time.monotonic() < deadline:
        time.sleep(0.5)
    status = jobs.job_status(job_id)
    assert status["state"] == "succeeded", jobs.log_tail(job_id)
    job_dir = jobs.jobs_dir() / job_id
    skipped = (job_dir / "work" / "ingest" / "skipped.csv").read_text()
    assert "broken.dcm" in skipped and "no pixel data" in skipped
    assert "epoch 1/1" in (job_dir / "log.txt").read_text()

    version_dir = registry.version_dir(status["result"]["version"])
    written = [p for root in (job_dir, version_dir) for p in root.rglob("*") if p.is_file()]
    assert len(written) > 20
    found = {str(p): leaks(p.read_bytes()) for p in written}
    assert {path: hits for path, hits in found.items() if hits} == {}


# ------------------------------------------------------------------------------ upload size cap


def configured_upload_cap_mb() -> int:
    with open(PROJECT_ROOT / ".streamlit" / "config.toml", "rb") as handle:
        return tomllib.load(handle)["server"]["maxUploadSize"]


def test_upload_cap_is_set_in_the_dashboard_config():
    cap = configured_upload_cap_mb()
    assert isinstance(cap, int) and 10 <= cap <= 100, "a chest X-ray needs tens of MB at most"
    assert cap < 200, "200 MB is streamlit's default: the cap would not be ours"


@pytest.fixture
def server(registry, tmp_path):
    """``streamlit run app.py`` from the project folder (so .streamlit/config.toml applies)."""
    with running_dashboard(tmp_path / "streamlit.log", dict(os.environ)) as url:
        yield url


@pytest.mark.browser
def test_screen_page_refuses_an_upload_over_the_cap_in_a_real_browser(server, tmp_path):
    need_chromium()
    from playwright.sync_api import expect, sync_playwright

    cap = configured_upload_cap_mb()
    too_big = tmp_path / "huge-scan.png"
    with open(too_big, "wb") as handle:
        handle.write(XRAY.read_bytes())
        handle.truncate(cap * 1024 * 1024 + 1)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(server)
            expect(page.get_by_text("Screen chest X-rays for tuberculosis")).to_be_visible(timeout=60_000)
            page.locator("input[type=file]").set_input_files(str(too_big))
            expect(page.get_by_text(re.compile(rf"File must be {cap}(\.0)? ?MB or smaller"))).to_be_visible(
                timeout=30_000
            )
            page.wait_for_timeout(1500)  # had it been sent, the page would now be screening it
            assert page.get_by_text("TB probability", exact=True).count() == 0
            assert page.get_by_text("Screening 1 image").count() == 0
            page.locator("input[type=file]").set_input_files(str(XRAY))  # a normal film still works
            result = page.get_by_test_id("stMetricLabel").get_by_text("TB probability", exact=True)
            expect(result).to_be_visible(timeout=90_000)  # the summary table's header would match too
        finally:
            browser.close()


IDENTIFYING_NAMES = ("Doe_Jane_MRN4242", "Smith_John_0042", "Brown_Ann_77")  # as clinics name files


@pytest.mark.browser
def test_with_identity_off_no_exported_byte_holds_an_uploads_file_name(server, tmp_path):
    """File names often carry a patient's name or record number. With identity off, the CSV, each PDF (its
    text, its metadata, its raw bytes), the zip (member names and bytes), every download's file name and
    the server's log are searched for any part of the uploaded names: films are film-01, film-02, ..."""
    need_chromium()
    import zipfile

    from playwright.sync_api import expect, sync_playwright
    from pypdf import PdfReader

    films = tmp_path / "films"
    films.mkdir()
    paths = [films / f"{IDENTIFYING_NAMES[0]}.png", films / f"{IDENTIFYING_NAMES[1]}.dcm", films / f"{IDENTIFYING_NAMES[2]}.png"]
    paths[0].write_bytes(XRAY.read_bytes())
    paths[1].write_bytes(dicom_of(SAMPLE / "Tuberculosis" / "tb0063.png"))
    paths[2].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # unreadable: its message must not name it
    # whole names and their word parts (digits alone would match PDF offsets by chance)
    tokens = {part for name in IDENTIFYING_NAMES for part in [name, *name.split("_")] if len(part) >= 4
              and not part.isdigit()}  # fmt: skip

    def found_in(data: bytes) -> list[str]:
        return sorted(t for t in tokens if t.encode() in data or t.encode("utf-16-be") in data)

    exported: dict[str, bytes] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400}, accept_downloads=True)
            page.goto(server)
            expect(page.get_by_text("Screen chest X-rays for tuberculosis")).to_be_visible(timeout=60_000)
            page.locator("input[type=file]").set_input_files([str(p) for p in paths])
            metric = page.get_by_test_id("stMetricLabel").get_by_text("TB probability", exact=True)
            expect(metric).to_have_count(1, timeout=120_000)
            for label in ("Download results (CSV)", "Download all reports (PDF, zip)", "Report (PDF)"):
                with page.expect_download(timeout=120_000) as download:
                    page.get_by_role("button", name=label).click()
                exported[download.value.suggested_filename] = Path(download.value.path()).read_bytes()
            # what the page itself shows, apart from the browser's own list of the files the user picked
            exported["page text"] = page.evaluate(
                """() => { const copy = document.body.cloneNode(true);
                    copy.querySelectorAll('[data-testid=stFileUploader]').forEach(e => e.remove());
                    return copy.innerText; }"""
            ).encode()
        finally:
            browser.close()

    assert set(exported) >= {"tb_screening_results.csv", "tb_screening_reports.zip", "page text"}
    pdfs = [data for name, data in exported.items() if name.endswith(".pdf")]
    with zipfile.ZipFile(io.BytesIO(exported["tb_screening_reports.zip"])) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    assert len(members) == 4  # three reports (the unreadable film's too) and the CSV
    pdfs += [data for name, data in members.items() if name.endswith(".pdf")]
    searched = {f"file name {name}": name.encode() for name in [*exported, *members]}
    searched.update({name: data for name, data in exported.items()})
    searched.update({f"zip member {name}": data for name, data in members.items()})
    for i, data in enumerate(pdfs):
        reader = PdfReader(io.BytesIO(data))
        searched[f"pdf {i} text"] = "".join(p.extract_text() for p in reader.pages).encode()
        searched[f"pdf {i} metadata"] = json.dumps({k: str(v) for k, v in (reader.metadata or {}).items()}).encode()
        assert "film-0" in str((reader.metadata or {}).get("/Title"))
    searched["server log"] = (tmp_path / "streamlit.log").read_bytes()
    leaked = {where: hits for where, data in searched.items() if (hits := found_in(data))}
    assert leaked == {}, leaked
    csv_text = exported["tb_screening_results.csv"].decode("utf-8-sig")
    assert sorted(row["file"] for row in csv.DictReader(io.StringIO(csv_text))) == ["film-01", "film-02", "film-03"]


# ------------------------------------------------------------------------------ which models load


def lambda_model_folder(parent: Path, marker: Path) -> Path:
    """A servable-looking folder whose model.keras holds a Lambda layer that writes ``marker`` when run.

    The lambda finds the marker's path in ``$CXR_TEST_MARKER`` (set by the test): it must be
    self-contained, since loading rebuilds it from bytecode without this module's globals.
    """
    import keras

    inputs = keras.Input((128, 128, 1))
    # A Python lambda is stored in the file as bytecode; rebuilding the model on load would run it.
    x = keras.layers.Lambda(
        lambda t: (
            __import__("pathlib").Path(__import__("os").environ["CXR_TEST_MARKER"]).write_text("x"),
            t,
        )[1],
        name="payload",
    )(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    folder = parent / "lambda-model"
    folder.mkdir()
    model.save(folder / "model.keras")
    marker.unlink(missing_ok=True)  # building the model ran the lambda once, here in the test
    (folder / "metadata.json").write_text(
        json.dumps({"threshold": 0.5, "model_sha256": sha256_file(folder / "model.keras")})
    )
    return folder


def test_models_load_in_safe_mode_so_a_model_file_cannot_run_code(registry, tmp_path, monkeypatch):
    from cxr_core.modelling.networks import load_model

    marker = tmp_path / "code-ran"
    monkeypatch.setenv(MARKER_ENV, str(marker))  # also read by the CLI's child process
    folder = lambda_model_folder(tmp_path, marker)
    with pytest.raises(ValueError, match="safe_mode"):
        load_model(folder / "model.keras")
    with pytest.raises(ModelError, match="refused: it contains executable code"):
        Predictor(folder)
    assert not marker.exists()

    # Even registered with a valid checksum and promoted, it is refused, by the CLI and the dashboard.
    version = registry.register(folder, version="v-lambda")
    promote_for_setup(registry, version)
    result = run_cli("predict", str(XRAY))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "refused: it contains executable code" in result.stderr
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.file_uploader(key="uploads").set_value([(XRAY.name, XRAY.read_bytes(), "image/png")])
    at.run()
    assert not at.exception
    assert any("could not be loaded" in e.value and "executable code" in e.value for e in at.error)
    assert not marker.exists()


def test_cli_loads_only_registry_versions_or_checksum_verified_folders(registry, tmp_path):
    current = registry.version_dir(registry.current_version())
    verified = tmp_path / "copied-version"
    shutil.copytree(current, verified)
    assert registry.resolve(verified) == verified  # its metadata.json records the model's sha256

    unrecorded = tmp_path / "unrecorded"
    shutil.copytree(current, unrecorded)
    meta = json.loads((unrecorded / "metadata.json").read_text())
    del meta["model_sha256"]
    write_json_atomic(unrecorded / "metadata.json", meta)
    with pytest.raises(ModelError, match="records no checksum"):
        registry.resolve(unrecorded)

    tampered = tmp_path / "tampered"
    shutil.copytree(current, tampered)
    with open(tampered / "model.keras", "ab") as handle:
        handle.write(b"\x00")
    with pytest.raises(ModelError, match="corrupt"):
        registry.resolve(tampered)

    result = run_cli("predict", str(XRAY), "--model", str(unrecorded))
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stdout == ""
    assert "records no checksum" in result.stderr and "models register" in result.stderr
    result = run_cli("predict", str(XRAY), "--model", str(verified))
    assert result.returncode == 0 and json.loads(result.stdout)["ok"] is True


# ------------------------------------------------------------------------------ admin actions


def test_promote_rollback_and_retrain_are_hidden_until_the_admin_password_is_given(registry, monkeypatch, tmp_path):
    admin_account(monkeypatch, tmp_path)
    shipped = registry.current_version()
    registry.register(registry.version_dir(shipped), version="v-candidate")
    registry.register(registry.version_dir(shipped), version="v-newer")
    promote_for_setup(registry, "v-newer")  # so there is a version to roll back to
    write_json_atomic(
        jobs.jobs_dir() / "20260101-000000-abcdef" / "status.json",
        {
            "id": "20260101-000000-abcdef",
            "state": "succeeded",
            "created": "2026-01-01T00:00:00+00:00",
            "data_path": "data/sample",
            "result": {
                "version": "v-candidate",
                "compared_with": "v-newer",
                # a verdict taken against the model in use, under the server's floors as they are now
                "gate": {
                    "passed": True,
                    "reasons": [],
                    "registry_stamp": registry.pointer_stamp(),
                    "policy": policy_stamp(load_params()["gate"]),
                },  # fmt: skip
                "promoted": False,
            },
        },
    )
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/retrain.py")
    at.run()
    assert not at.exception
    labels = [b.label for b in at.button]
    assert not [label for label in labels if label.startswith(("Start", "Promote", "Roll back", "Cancel"))]
    assert any(label == "Unlock" for label in labels)
    assert registry.current_version() == "v-newer"

    unlock(at, "not the password")
    assert any("Wrong user name or password" in e.value for e in at.error)
    assert not [b for b in at.button if b.label.startswith(("Promote", "Roll back"))]
    auth.reset_throttle()
    unlock(at, PASSWORD)
    labels = [b.label for b in at.button]
    assert "Promote v-candidate to the model in use" in labels
    assert any(label.startswith("Roll back to the previous version") for label in labels)
    auth.reset_throttle()
