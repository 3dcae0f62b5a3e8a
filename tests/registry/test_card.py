"""The model card's resolution-and-sharpness section, from the shipped models' own measurements."""

import json

from conftest import PROJECT_ROOT

from cxr_core.registry.card import render_model_card

MODELS = PROJECT_ROOT / "models"


def _card(version: str, **report_changes) -> str:
    folder = MODELS / version
    return render_model_card(
        json.loads((folder / "metadata.json").read_text()),
        {**json.loads((folder / "metrics.json").read_text()), **report_changes},
        json.loads((folder / "ingest_summary.json").read_text()),
    )


def test_a_network_that_reads_sharpness_is_told_so_on_its_card():
    """v20261202-065311: an unsharp mask raised its probability by a median 0.28 on the test films."""
    card = _card("v20261202-065311")
    assert "### Resolution and sharpness" in card
    assert "| the network's input edge-enhanced (unsharp mask 0.5, sigma 1 px) | 571 | 0.278 | 0.835 | +0.278 |" in card
    assert "**This version reads sharpness as evidence**" in card and "use a site profile" in card


def test_a_network_within_the_tolerance_gets_the_table_without_the_warning():
    """The figures of the cam-evidence-sharpness candidate (docs/model-ablation.md), signed changes under 0.05."""

    def changes(median_abs, over, signed):
        return {"all": {"films": 571, "median_abs": median_abs, "over_tolerance": over, "median_signed": signed}}

    acquisition = {"upscale3000": changes(0.0032, 0.007, 0.0013), "blur": changes(0.0441, 0.448, -0.0441),
                   "unsharp": changes(0.018, 0.221, 0.0177), "tolerance": 0.05}  # fmt: skip
    card = _card("v20261202-065311", acquisition=acquisition)
    assert "| the film at 3,000 px (bicubic), through the whole path | 571 | 0.003 | 0.007 | +0.001 |" in card
    assert "reads sharpness as evidence" not in card


def test_a_model_measured_before_the_section_existed_gets_no_empty_table():
    report = json.loads((MODELS / "v20261130-052333" / "metrics.json").read_text())
    assert "acquisition" not in report
    assert "Resolution and sharpness" not in _card("v20261130-052333")
