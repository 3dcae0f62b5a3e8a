"""One source of settings: params.yaml in step with the defaults, forms and ``--set`` merged by one function."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxr_core import settings

ROOT = Path(__file__).resolve().parent.parent


def _shape(value):
    """Keys and value types of a nested dict (ints count as floats where the default is a float)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    return (
        "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__
    )


def test_params_yaml_has_exactly_the_settings_keys():
    on_disk = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert _shape(on_disk) == _shape(settings.defaults())


def test_params_yaml_text_round_trips_to_the_defaults():
    assert yaml.safe_load(settings.params_yaml_text()) == settings.defaults()


def test_a_partial_section_is_completed_and_typed():
    train = settings.section("train", {"epochs": "5", "augment": {"zoom_in": 0}})
    assert train["epochs"] == 5 and isinstance(train["epochs"], int)
    assert train["augment"]["zoom_in"] == 0.0 and isinstance(train["augment"]["zoom_in"], float)
    assert train["augment"]["rotation"] == settings.AugmentSettings().rotation
    assert train["patience"] == settings.TrainSettings().patience


def test_a_switch_written_as_text_means_what_it_says():
    for text, meant in (("false", False), ("False", False), ("no", False), ("0", False), ("true", True), ("1", True)):
        assert settings.section("train", {"model": {"standardize": text}})["model"]["standardize"] is meant
    assert settings.section("ingest", {"lung_crop": 0})["lung_crop"] is False


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epoch": 5}, "unknown setting train.epoch"),
        ({"epochs": 2.5}, "train.epochs must be a int"),
        ({"augment": 3}, "train.augment must be a mapping"),
        ({"augment": {"flip": "maybe"}}, "train.augment.flip must be a bool"),
        ({"model": {"standardize": 2}}, "train.model.standardize must be a bool"),
    ],
)
def test_bad_settings_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        settings.section("train", overrides)


def test_form_defaults_and_params_round_trip():
    params = settings.load_params()
    values = settings.form_defaults(params)
    assert values["data_path"] == params["data"]["path"]
    assert values["epochs"] == params["train"]["epochs"]
    values.update(epochs=2, gate_min_sensitivity=0.5, gate_max_auc_drop=0.1, data_path="/data/kaggle", seed=7)
    merged = settings.params_from_form(params, values)
    assert merged["train"]["epochs"] == 2
    assert merged["gate"] == {**settings.defaults("gate"), "min_sensitivity": 0.5, "max_auc_drop": 0.1}
    assert merged["data"]["path"] == "/data/kaggle"
    assert merged["ingest"]["seed"] == merged["train"]["seed"] == 7  # one seed for split and training
    assert merged["train"]["augment"] == params["train"]["augment"]  # untouched settings survive
    assert params == settings.load_params()  # the input dict is not modified
    with pytest.raises(ValueError, match="unknown form field"):
        settings.params_from_form(params, {"epochz": 3})


def test_every_form_field_names_a_real_setting():
    base = settings.defaults()
    for name, dotted in settings.FORM_FIELDS.items():
        node = base
        for part in dotted.split("."):
            assert part in node, (name, dotted)
            node = node[part]


def test_cli_writes_a_run_params_file_from_form_values_and_set(tmp_path):
    out = tmp_path / "run" / "params.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "cxr_core", "params", "--set", "evaluate.n_boot=50",
         "--form", json.dumps({"epochs": 3, "data_path": "/x"}), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = yaml.safe_load(out.read_text())
    assert written["train"]["epochs"] == 3 and written["evaluate"]["n_boot"] == 50
    assert written["data"]["path"] == "/x" and written["gate"] == settings.defaults("gate")
    bad = subprocess.run(
        [sys.executable, "-m", "cxr_core", "params", "--set", "train.nonsense=1"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "unknown setting train.nonsense" in bad.stderr


def test_a_recipe_gets_its_network_whole_not_the_params_files_model_settings():
    params_train = {"model": {"architecture": "cam", "standardize": True, "dropout": 0.1}, "epochs": 7}
    for name, recipe in settings.RECIPES.items():
        train = settings.with_recipe(params_train, name)
        assert train["epochs"] == 7  # the rest of the params file still counts
        if "model" in recipe:
            assert train["model"] == {**settings.defaults("train")["model"], **recipe["model"]}, name
    assert settings.with_recipe(params_train, "cam-evidence-sharpness")["model"]["standardize"] is False
    assert settings.with_recipe(params_train, "cam-evidence-sharpness-standardized")["model"]["standardize"] is True
    assert settings.with_recipe(params_train, "shipped")["model"]["standardize"] is True  # the params file's own
