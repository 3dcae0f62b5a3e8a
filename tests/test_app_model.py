"""The Model page through AppTest: the model card, every version with its figures, which one is in use."""

import pytest
import test_app_screen as shared
from gatekeeping import promote_for_setup
from streamlit.testing.v1 import AppTest
from test_app_screen import open_page

pytestmark = pytest.mark.slow
seed, dashboard = shared.seed, shared.dashboard  # fixtures: a private copy of a really trained registry


def open_model_page() -> AppTest:
    return open_page("pages/model.py", 60)


def test_versions_card_and_current(dashboard):
    at = open_model_page()
    current = dashboard.registry.current_version()
    assert any(current in m.value and "in use" in m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert set(table["version"]) == {current, "v-copy"}
    status = dict(zip(table["version"], table["status"], strict=True))
    assert status[current] == "in use" and status["v-copy"] == "not promoted"
    assert {"created", "ROC AUC", "sensitivity", "specificity", "threshold"} <= set(table.columns)
    assert table["created"].str.len().min() >= 10
    assert at.selectbox(key="card_version").value == current
    card = next(m.value for m in at.markdown if m.value.startswith("### Model card"))
    assert f"CNN {current}" in card.splitlines()[0]
    assert "#### Intended use" in card and "Operating threshold" in card


def test_status_follows_promotion(dashboard):
    previous = dashboard.registry.current_version()
    promote_for_setup(dashboard.registry, "v-copy")
    at = open_model_page()
    status = dict(zip(at.dataframe[0].value["version"], at.dataframe[0].value["status"], strict=True))
    assert status == {"v-copy": "in use", previous: "previously in use"}
    at.selectbox(key="card_version").set_value(previous)
    at.run()
    assert any(m.value.startswith("### Model card") and previous in m.value for m in at.markdown)


def test_empty_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_MODELS_DIR", str(tmp_path / "none"))
    at = open_model_page()
    assert any("No model is registered" in i.value for i in at.info)
