"""The Screen page through streamlit's AppTest: real X-rays in, probability, decision and overlay out."""

import io
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from builders import make_dicom
from PIL import Image
from streamlit.testing.v1 import AppTest

from cxr_core.registry.store import Registry
from ui import screening_view

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parent.parent
APP = str(PROJECT_ROOT / "app.py")
SAMPLE = PROJECT_ROOT / "data" / "sample"
TB_XRAY = SAMPLE / "Tuberculosis" / "tb0063.png"
NORMAL_XRAY = SAMPLE / "Normal" / "CHNCXR_0001_0.png"


def seed_registry(tmp_path_factory) -> Path:
    """A real registry trained once per test session on the bundled sample (shared by the app tests)."""
    from cxr_core.pipeline.run import run_pipeline
    from cxr_core.settings import load_params

    base = tmp_path_factory.getbasetemp() / "dashboard-seed"
    models = base / "models"
    if not (models / "current.json").exists():
        params = load_params()
        params["train"]["epochs"] = 2
        params["evaluate"]["n_boot"] = 100
        run_pipeline(SAMPLE, base / "work", params, models_root=models, promote="always")
        Registry(models).register(
            base / "work" / "candidate", version="v-copy"
        )  # a second, unpromoted version
    return models


@pytest.fixture(scope="session")
def seed(tmp_path_factory):
    return seed_registry(tmp_path_factory)


@pytest.fixture
def dashboard(seed, tmp_path, monkeypatch):
    """A private copy of the seed registry; the real models/ folder is never touched."""
    models = tmp_path / "models"
    shutil.copytree(seed, models)
    monkeypatch.setenv("CXR_MODELS_DIR", str(models))
    monkeypatch.setenv("CXR_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.delenv("CXR_ADMIN_PASSWORD", raising=False)
    monkeypatch.setenv("CXR_SECRETS_FILE", str(tmp_path / "no-secrets.toml"))
    return SimpleNamespace(registry=Registry(models), root=models)


def open_screen() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def upload(at: AppTest, *files: tuple[str, bytes]) -> AppTest:
    at.file_uploader(key="uploads").set_value(
        [(name, data, "application/octet-stream") for name, data in files]
    )
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> list[str]:
    """Element texts as a reader sees them (file names are markdown-escaped on the page)."""
    return [element.value.replace("\\", "") for element in elements]


def decisions(at: AppTest) -> list[str]:
    found = texts(at.error) + texts(at.success)
    return [t for t in found if screening_view.DECISION_TB in t or screening_view.DECISION_NORMAL in t]


def test_upload_real_xray_shows_probability_decision_and_overlay(dashboard):
    at = upload(open_screen(), (TB_XRAY.name, TB_XRAY.read_bytes()))
    probability = [m for m in at.metric if m.label == "TB probability"]
    assert len(probability) == 1
    assert 0.0 <= float(probability[0].value) <= 1.0
    assert len(decisions(at)) == 1
    captions = [c for image in at.image for c in image.captions]
    assert "Original" in captions
    assert any(c.startswith("Grad-CAM") for c in captions)
    current = dashboard.registry.current_version()
    assert any(current in c.value for c in at.caption)
    assert len(at.dataframe) == 1 and at.dataframe[0].value.iloc[0]["file"] == TB_XRAY.name


def test_broken_file_shows_its_message_and_the_good_file_still_gets_a_result(dashboard):
    broken = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    pdf = b"%PDF-1.4\n% a referral letter\n"
    at = upload(
        open_screen(),
        ("broken.png", broken),
        (NORMAL_XRAY.name, NORMAL_XRAY.read_bytes()),
        ("letter.jpg", pdf),
    )
    errors = " ".join(texts(at.error))
    assert "broken.png" in errors and "truncated or corrupt" in errors
    assert "letter.jpg" in errors and "PDF" in errors
    assert len([m for m in at.metric if m.label == "TB probability"]) == 1
    assert len(decisions(at)) == 1
    counts = {m.label: m.value for m in at.metric}
    assert counts["Images"] == "3" and counts["Could not be read"] == "2"
    table = at.dataframe[0].value
    assert list(table["file"]) == ["broken.png", NORMAL_XRAY.name, "letter.jpg"]


def test_non_radiograph_and_tiny_image_are_explained(dashboard):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)
    photo[..., 0] = 250  # strongly coloured
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")
    xray = Image.open(TB_XRAY).convert("L").resize((180, 180))
    small = io.BytesIO()
    xray.save(small, format="PNG")
    at = upload(open_screen(), ("holiday.png", buffer.getvalue()), ("small.png", small.getvalue()))
    assert any("colour photograph" in t for t in texts(at.error))
    assert any("small image" in t for t in texts(at.warning))


def test_dicom_details_and_identifiers_only_on_request(dashboard):
    pixels = np.asarray(Image.open(TB_XRAY).convert("L"))
    study = make_dicom(pixels, bits_stored=8, bits_allocated=8)

    at = upload(open_screen(), ("study-no-extension", study))
    assert len([m for m in at.metric if m.label == "TB probability"]) == 1

    def details() -> str:
        return next(m.value for m in at.markdown if m.value.startswith("**Format:**"))

    assert "**Format:** DICOM" in details() and "**Modality:** DX" in details()
    assert "Doe" not in details()
    assert "patient_name" not in at.dataframe[0].value.columns

    at.checkbox[0].check()
    at.run()
    assert "**Patient name:** Doe^Jane" in details()
    assert at.dataframe[0].value.iloc[0]["patient_id"] == "MRN-0042"


def test_opacity_moves_without_rescoring_and_a_second_upload_is_scored(dashboard):
    """Speed of a warm upload is measured by bench/page.py, not asserted here (no timed asserts)."""
    at = upload(open_screen(), (TB_XRAY.name, TB_XRAY.read_bytes()))  # warms the model cache
    first = at.session_state["screen_memo"]["items"]
    at.slider[0].set_value(0.9)
    at.run()
    assert at.session_state["screen_memo"]["items"] is first
    upload(at, (NORMAL_XRAY.name, NORMAL_XRAY.read_bytes()))
    assert len([m for m in at.metric if m.label == "TB probability"]) == 1


def test_promotion_is_used_without_restart(dashboard):
    at = upload(open_screen(), (TB_XRAY.name, TB_XRAY.read_bytes()))
    before = dashboard.registry.current_version()
    assert any(before in c.value for c in at.caption)
    dashboard.registry.promote("v-copy")
    at.run()
    assert any("v-copy" in c.value for c in at.caption)
    assert at.dataframe[0].value.iloc[0]["model_version"] == "v-copy"
    # AppTest keeps what the entry script (app.py) drew only on a session's first run, so the sidebar
    # is checked in a fresh session.
    assert "v-copy" in " ".join(texts(open_screen().sidebar.markdown))
    dashboard.registry.rollback()
    at.run()
    assert at.dataframe[0].value.iloc[0]["model_version"] == before


def test_a_damaged_model_file_falls_back_to_the_previous_version_with_a_warning(dashboard):
    before = dashboard.registry.current_version()
    dashboard.registry.promote("v-copy")
    with open(dashboard.root / "v-copy" / "model.keras", "r+b") as handle:
        handle.seek(100)
        handle.write(b"damaged")
    at = upload(open_screen(), (TB_XRAY.name, TB_XRAY.read_bytes()))
    assert any("corrupt" in w.value and before in w.value for w in at.warning)
    assert at.dataframe[0].value.iloc[0]["model_version"] == before


def test_without_a_model_the_page_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_MODELS_DIR", str(tmp_path / "empty"))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert any("Screening is not available" in t and "No trained model" in t for t in texts(at.error))
