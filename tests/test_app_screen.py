"""The Screen page through streamlit's AppTest: real X-rays in, probability, decision and overlay out."""

import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from builders import make_dicom
from gatekeeping import promote_for_setup, shifted_model
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
        run_pipeline(SAMPLE, base / "work", params, models_root=models, promote="gate",
                     override_reason="test seed: a 2-epoch model on 20 films cannot pass the WHO floors")  # fmt: skip
        # a second, unpromoted version whose weights give other probabilities (not a byte copy, so a test
        # that it is served after promotion can tell the two apart by more than the label)
        Registry(models).register(shifted_model(base / "work" / "candidate", base / "v-copy"), version="v-copy")
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
    monkeypatch.setenv("CXR_USERS_FILE", str(tmp_path / "no-admin-users.toml"))
    monkeypatch.setenv("CXR_UPLOADS_DIR", str(tmp_path / "uploads"))
    return SimpleNamespace(registry=Registry(models), root=models)


def open_screen() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def open_page(page: str, timeout: float = 120) -> AppTest:
    """The app opened on ``page`` (as a clinician's click in the menu does), with no exception shown."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
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
    """The result boxes of the film card (one result vocabulary: TB suspected, Borderline, No TB signs)."""
    found = texts(at.error) + texts(at.success) + texts(at.warning)
    return [t for t in found if any(t.startswith(f"**{result}**") for result in screening_view.RESULTS)]


def viewer_pictures(at: AppTest) -> list[np.ndarray]:
    """The pictures in the viewer's Plotly figures, decoded from the PNG the page sends to the browser."""
    import base64

    found = []
    for element in at.get("plotly_chart"):
        spec = json.loads(element.proto.spec)
        for trace in spec["data"]:
            if trace.get("type") == "image" and str(trace.get("source", "")).startswith("data:image/png"):
                png = base64.b64decode(trace["source"].split(",", 1)[1])
                found.append(np.asarray(Image.open(io.BytesIO(png))))
    return found


def viewer_style(at: AppTest) -> str:
    """The style the viewer's controls send to the browser (window filter, layer opacity, what is hidden)."""
    return next(m.value for m in at.markdown if "cxr-window" in m.value)


def download_labels(at: AppTest) -> list[str]:
    return [element.proto.label for element in at.get("download_button")]


def test_upload_real_xray_shows_probability_decision_and_overlay(dashboard):
    at = upload(open_screen(), (TB_XRAY.name, TB_XRAY.read_bytes()))
    probability = [m for m in at.metric if m.label == "TB probability"]
    assert len(probability) == 1
    assert 0.0 <= float(probability[0].value) <= 1.0
    assert len(decisions(at)) == 1
    film, heat = viewer_pictures(at)  # the film and its Grad-CAM layer, in the zoomable viewer
    assert film.ndim == 2 and heat.shape == (*film.shape, 4)
    assert {"Download results (CSV)", "Download all reports (PDF, zip)", "Report (PDF)"} <= set(
        download_labels(at)
    )
    assert any(
        "Heatmap: Grad-CAM (the network's evidence for TB" in c.value for c in at.caption
    )
    legends = [t for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"] if t.get("showscale")]
    assert len(legends) == 1 and legends[0]["colorbar"]["title"]["text"] == "Grad-CAM, TB probability"
    assert (legends[0]["zmin"], legends[0]["zmax"]) == (0.0, 1.0)  # the overlay's colours, in probability units
    at.toggle(key="show_heatmap").set_value(False).run()
    assert "g.colorbar { display: none; }" in viewer_style(at)  # hidden by the browser, the figure unchanged
    current = dashboard.registry.current_version()
    assert any(current in c.value for c in at.caption)
    # identity is off by default: the film is named by its place on the worklist, never by its file name
    assert len(at.dataframe) == 1 and at.dataframe[0].value.iloc[0]["file"] == "film-01"
    assert TB_XRAY.stem not in json.dumps([m.value for m in at.markdown] + [c.value for c in at.caption])


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
    assert "film-01" in errors and "truncated or corrupt" in errors
    assert "film-03" in errors and "PDF" in errors
    assert len([m for m in at.metric if m.label == "TB probability"]) == 1
    assert len(decisions(at)) == 1
    counts = {m.label: m.value for m in at.metric}
    assert counts["Images"] == "3" and counts["Unreadable"] == "2"
    table = at.dataframe[0].value
    assert list(table["file"]) == ["film-02", "film-01", "film-03"]  # unreadable last
    assert list(table["result"])[1:] == ["Unreadable", "Unreadable"] and list(table["tb_probability"])[1:] == ["", ""]


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

    at.checkbox(key="include_ids").check()
    at.run()
    assert "**Patient:** Doe, Jane" in details()
    assert at.dataframe[0].value.iloc[0]["patient_id"] == "MRN-0042"
    assert at.dataframe[0].value.iloc[0]["patient_name"] == "Doe, Jane"


def test_opacity_moves_without_rescoring_and_a_second_upload_is_scored(dashboard):
    """Speed of a warm upload is measured by bench/page.py, not asserted here (no timed asserts)."""
    at = upload(open_screen(), (TB_XRAY.name, TB_XRAY.read_bytes()))  # warms the model cache
    first = at.session_state["screen_memo"]["items"]
    at.slider(key="alpha").set_value(0.9)
    at.run()
    assert at.session_state["screen_memo"]["items"] is first
    upload(at, (NORMAL_XRAY.name, NORMAL_XRAY.read_bytes()))
    assert len([m for m in at.metric if m.label == "TB probability"]) == 1


def test_promotion_is_used_without_restart(dashboard):
    at = upload(open_screen(), (TB_XRAY.name, TB_XRAY.read_bytes()))
    before = dashboard.registry.current_version()
    assert any(before in c.value for c in at.caption)
    old_probability = float(at.dataframe[0].value.iloc[0]["tb_probability"])  # shown as text, enough digits
    promote_for_setup(dashboard.registry, "v-copy")
    at.run()
    assert any("v-copy" in c.value for c in at.caption)
    assert at.dataframe[0].value.iloc[0]["model_version"] == "v-copy"
    # v-copy's weights differ (output shifted by 1.5 logits): the new weights score, not just the new label
    assert abs(float(at.dataframe[0].value.iloc[0]["tb_probability"]) - old_probability) > 0.05
    # AppTest keeps what the entry script (app.py) drew only on a session's first run, so the sidebar
    # is checked in a fresh session.
    assert "v-copy" in " ".join(texts(open_screen().sidebar.markdown))
    dashboard.registry.rollback()
    at.run()
    assert at.dataframe[0].value.iloc[0]["model_version"] == before


def test_a_damaged_model_file_falls_back_to_the_previous_version_with_a_warning(dashboard):
    before = dashboard.registry.current_version()
    promote_for_setup(dashboard.registry, "v-copy")
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


# ------------------------------------------------------------------------------ issue 12: the workflow


def score_as(monkeypatch, probabilities: dict[str, float]):
    """Give named films fixed probabilities (the model's own are all alike on the tiny sample)."""
    from cxr_core.modelling.predictor import Predictor

    real = Predictor.screen

    def screen(self, items, **options):
        screened = real(self, items, **options)
        for item in screened:
            if item.ok and item.name in probabilities:
                item.prediction.probability = probabilities[item.name]
                item.prediction.label = (
                    "Tuberculosis" if probabilities[item.name] >= self.threshold else "Normal"
                )
        return screened

    monkeypatch.setattr(Predictor, "screen", screen)


def sample_films() -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted((SAMPLE / "Normal").glob("*.png"))[:4]]


def test_worklist_is_in_risk_order_filterable_and_opens_the_chosen_film(dashboard, monkeypatch):
    threshold = screening_view.serving_model(dashboard.registry).threshold
    films = sample_films()
    names = [screening_view.pseudonym(i + 1) for i in range(len(films))]  # identity off: named by position
    probabilities = {
        names[0]: max(0.0, threshold - 0.3),  # no TB signs
        names[1]: min(1.0, threshold + 0.3),  # TB suspected
        names[2]: threshold + 0.01,  # borderline, above
        names[3]: min(1.0, threshold + 0.2),  # TB suspected, lower
    }
    score_as(monkeypatch, probabilities)
    at = upload(open_screen(), *films, ("letter.jpg", b"%PDF-1.4\n"))
    table = at.dataframe[0].value
    assert list(table["file"]) == [names[1], names[3], names[2], names[0], "film-05"]
    assert list(table["result"]) == [
        "TB suspected",
        "TB suspected",
        "Borderline (TB side)",
        "No TB signs",
        "Unreadable",
    ]

    def heading() -> str:
        return next(m.value.replace("\\", "") for m in at.markdown if m.value.startswith("#### "))

    # the highest-risk film is open first, and it is the ticked row
    assert heading() == f"#### {names[1]}"
    assert list(at.session_state["worklist"]["selection"]["rows"]) == [0]

    at.session_state["worklist"] = {"selection": {"rows": [2]}}  # a click on the third row
    at.run()
    assert heading() == f"#### {names[2]}"

    at.button_group(key="worklist_filter").set_value(["Borderline", "Unreadable"])
    at.run()
    assert list(at.dataframe[0].value["file"]) == [names[2], "film-05"]
    ticked = list(at.session_state["worklist"]["selection"]["rows"])
    assert heading() == f"#### {list(at.dataframe[0].value['file'])[ticked[0]]}"  # ticked row = film shown

    at.session_state["worklist"] = {"selection": {"rows": [1]}}
    at.run()
    assert any("film-05" in t and "could not be screened" in t for t in texts(at.error))


def test_the_same_file_twice_is_one_entry_and_the_page_says_so(dashboard):
    data = TB_XRAY.read_bytes()
    at = upload(
        open_screen(), ("first.png", data), ("again.png", data), (NORMAL_XRAY.name, NORMAL_XRAY.read_bytes())
    )
    counts = {m.label: m.value for m in at.metric}
    assert counts["Images"] == "2"
    assert len(at.dataframe[0].value) == 2 and list(at.dataframe[0].value["file"]) != ["film-03"]
    assert any("film-01 was dropped twice" in t for t in texts(at.info))  # no upload name with identity off
    at.checkbox(key="include_ids").check()
    at.run()
    assert any("again.png is the same file as first.png" in t for t in texts(at.info))


def test_viewer_controls_change_the_style_not_the_figure(dashboard):
    """Window/level, opacity, heatmap and outline are applied by the browser: the figure (and so the
    chart and the reader's zoom) stays the same while the film shows other contrast."""
    import re

    at = upload(open_screen(), (TB_XRAY.name, TB_XRAY.read_bytes()))
    spec = at.get("plotly_chart")[0].proto.spec
    film, heat = viewer_pictures(at)
    from cxr_core.imaging.decode import read_image

    original = read_image(TB_XRAY.read_bytes()).pixels
    assert np.array_equal(film, original)  # full resolution, the film's own greys

    at.slider(key="wl_width").set_value(64)
    at.slider(key="wl_level").set_value(100)
    at.slider(key="alpha").set_value(0.7)
    at.run()
    assert at.get("plotly_chart")[0].proto.spec == spec
    assert "opacity: 0.700" in viewer_style(at)
    at.toggle(key="show_heatmap").set_value(False)
    at.run()
    assert at.get("plotly_chart")[0].proto.spec == spec
    style = viewer_style(at)
    slope, intercept = (float(v) for v in re.search(r'slope="([^"]+)" intercept="([^"]+)"', style).groups())
    assert (slope, intercept) == pytest.approx(screening_view.window_transfer(100, 64), abs=1e-6)
    # the browser's linear map on 0..1 greys is apply_window's map on 0..255
    from cxr_core.imaging.display import apply_window

    mapped = np.clip(np.rint((slope * (original / 255.0) + intercept) * 255.0), 0, 255)
    assert np.abs(mapped - apply_window(original, 100, 64)).max() <= 1
    assert "g.imagelayer > g:nth-child(2) { display: none; }" in style
    at.button(key="wl_reset").click()
    at.run()
    assert at.slider(key="wl_width").value == 256 and at.slider(key="wl_level").value == 128
    assert 'slope="1.000000" intercept="0.000000"' in viewer_style(at)
    assert any(t.startswith("Lung outline") for t in [w.label for w in at.toggle])  # the shipped lung model


def test_dicom_identity_on_card_table_and_exports_only_when_switched_on(dashboard):
    pixels = np.asarray(Image.open(TB_XRAY).convert("L"))
    study = make_dicom(pixels, bits_stored=8, bits_allocated=8, study=True)
    at = upload(open_screen(), ("study.dcm", study))
    page = " ".join(m.value for m in at.markdown)
    assert "Doe" not in page and "ACC-7" not in page
    assert "Result for PACS (DICOM)" not in download_labels(at)
    assert any("Switch on patient identity to export the result as DICOM" in c.value for c in at.caption)
    at.checkbox(key="include_ids").check()
    at.run()
    assert "Result for PACS (DICOM)" in download_labels(at)
    card = " ".join(m.value.replace("\\", "") for m in at.markdown)
    assert "**Patient:** Doe, Jane" in card and "**Accession number:** ACC-7" in card
    assert "**Study date:** 2024-01-31" in card
    row = at.dataframe[0].value.iloc[0]
    assert row["study_date"] == "2024-01-31" and row["accession_number"] == "ACC-7"


def test_a_promotion_between_runs_is_announced(dashboard):
    at = upload(open_screen(), (TB_XRAY.name, TB_XRAY.read_bytes()))
    assert not any("model in use changed" in w.value for w in at.warning)
    before = dashboard.registry.current_version()
    promote_for_setup(dashboard.registry, "v-copy")
    at.run()
    notice = [w.value for w in at.warning if "model in use changed" in w.value]
    assert notice and before in notice[0] and "v-copy" in notice[0]


def test_a_lung_mask_gets_an_outline_toggle_over_the_film(dashboard, monkeypatch):
    """The hook for lung segmentation: an item with ``lung_mask`` gets its outline drawn in the viewer."""
    import json

    from cxr_core.modelling.predictor import Predictor

    real = Predictor.screen

    def screen(self, items, **options):
        screened = real(self, items, **options)
        for item in screened:
            mask = np.zeros(item.image.pixels.shape, np.uint8)
            mask[50:400, 60:230] = 1
            item.lung_mask = mask
        return screened

    monkeypatch.setattr(Predictor, "screen", screen)
    at = upload(open_screen(), (TB_XRAY.name, TB_XRAY.read_bytes()))
    assert at.toggle(key="show_lungs").value is True

    def outlines() -> int:
        spec = json.loads(at.get("plotly_chart")[0].proto.spec)
        return sum(1 for trace in spec["data"] if trace.get("type") == "scatter")

    assert outlines() == 1 and "g.scatterlayer { display: none; }" not in viewer_style(at)
    at.toggle(key="show_lungs").set_value(False)
    at.run()
    assert "g.scatterlayer { display: none; }" in viewer_style(at)  # hidden in the browser, zoom kept


def write_evidence_reference(root: Path, version: str, p05: float | None) -> None:
    """What the lead's training writes into a model's metadata: where its validation films put their evidence."""
    path = root / version / "metadata.json"
    meta = json.loads(path.read_text())
    meta.pop("evidence_reference", None)
    if p05 is not None:
        meta["evidence_reference"] = {"lung_share_p05": p05, "lung_share_p50": min(1.0, p05 + 0.2), "n_films": 120,
                                      "split": "validation", "how": "Grad-CAM mass inside the lung mask, per film."}  # fmt: skip
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("p05, warned", [(None, False), (0.0, False), (1.0, True)])
def test_the_evidence_figure_is_neutral_and_warns_only_below_the_models_5th_percentile(dashboard, p05, warned):
    version = dashboard.registry.current_version()
    write_evidence_reference(dashboard.root, version, p05)
    at = upload(open_screen(), (TB_XRAY.name, TB_XRAY.read_bytes()))
    assert any(c.value.startswith("Evidence inside the lung fields:") for c in at.caption)  # on every film
    unusual = [w.value for w in at.warning if "Unusual for this model" in w.value]
    assert len(unusual) == int(warned)  # p05 = 1.0: every real share is below it; 0.0 or no key: never
    assert not any("lies outside the lungs: read with care" in w.value for w in at.warning)


def test_the_model_card_says_how_the_evidence_level_was_set(dashboard):
    from cxr_core.registry.card import write_card

    version = dashboard.registry.current_version()
    write_evidence_reference(dashboard.root, version, 0.31)
    card = write_card(dashboard.root / version).read_text()
    assert "warns only below 31.0%" in card and "5th percentile over the 120 validation films" in card
    assert "Grad-CAM mass inside the lung mask, per film." in card
    write_evidence_reference(dashboard.root, version, None)
    assert "warns about no film" in write_card(dashboard.root / version).read_text()
