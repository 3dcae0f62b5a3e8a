"""A version with a TFLite twin is served without importing Keras or TensorFlow.

The classifier's head weights (Grad-CAM's gradient is taken through them in numpy) and its input side
are read from the ``.keras`` file itself (cxr_core/modelling/keras_archive.py). These tests hold that
reader to what Keras loads, layer by layer and weight by weight, for the shipped classifier and every
architecture the pipeline builds; hold a serving process, the CLI's, to scoring real films with no
TensorFlow module loaded and with the Keras runtime's results; and hold every file the reader does not
take (a Lambda layer above all) to Keras' safe-mode loading, which refuses code even when a valid twin
sits beside it.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_records
from test_privacy import lambda_model_folder

from cxr_core.errors import ModelError
from cxr_core.modelling import networks, runtime
from cxr_core.modelling.keras_archive import read_archive
from cxr_core.modelling.predictor import Predictor
from cxr_core.registry.store import Registry, sha256_file
from cxr_core.settings import models_dir

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4  # issue #23: a runtime serves only with Keras' outputs


def _saved_architectures(folder: Path) -> list[Path]:
    built = [
        networks.build_model(side=64),
        networks.build_compact_model(side=64),
        networks.build_cam_model(side=64),
        networks.build_network(64, {"architecture": "cam", "standardize": True}),
    ]
    return [networks.save_model(model, folder / f"{i}-{model.name}.keras") for i, model in enumerate(built)]


def test_the_reader_gives_every_layer_and_weight_keras_loads(tmp_path):
    shipped = Registry(models_dir()).resolve() / "model.keras"
    for path in [shipped, *_saved_architectures(tmp_path)]:
        read = read_archive(path)
        loaded = networks.load_model(path)
        layers = [layer for layer in loaded.layers if layer.__class__.__name__ != "InputLayer"]
        assert read is not None, path
        assert read.side == loaded.input_shape[1]
        assert [(layer.kind, layer.name) for layer in read.layers] == [
            (layer.__class__.__name__, layer.name) for layer in layers
        ]
        for ours, theirs in zip(read.layers, layers, strict=True):
            assert len(ours.weights) == len(theirs.weights), (path.name, theirs.name)
            for mine, keras_weight in zip(ours.weights, theirs.weights, strict=True):
                np.testing.assert_array_equal(mine, np.asarray(keras_weight))
        # the split Grad-CAM uses, and the head frozen from it, are the same from either source
        assert [layer.name for layer in runtime.split_at_features(read)[1]] == [
            layer.name for layer in runtime.split_at_features(loaded)[1]
        ]
        ours, theirs = (runtime.freeze_head(*runtime.split_at_features(m)[1:]) for m in (read, loaded))
        assert len(ours.steps) == len(theirs.steps)
        for mine, keras_step in zip(ours.steps, theirs.steps, strict=True):
            for name in ("kind", "activation", "pool", "strides", "padding"):
                assert getattr(mine, name) == getattr(keras_step, name), (path.name, name)
            for name in ("kernel", "bias"):
                if getattr(keras_step, name) is None:
                    assert getattr(mine, name) is None
                else:
                    np.testing.assert_array_equal(getattr(mine, name), getattr(keras_step, name))
        np.testing.assert_array_equal(ours.output_kernel, theirs.output_kernel)


def test_the_archive_headed_twin_scores_exactly_as_the_keras_headed_one(shared_cxr):
    model_dir = Registry(models_dir()).resolve()
    blob = (model_dir / runtime.TFLITE_FILE).read_bytes()
    predictor = Predictor(model_dir)
    rows = [row for source in ("shenzhen", "da", "rahmandb", "tbx11k") for row in shared_records(source)[:3]]
    inputs = np.stack([predictor.model_input(shared_cxr / row["path"]).pixels for row in rows])
    from_file = runtime.TfliteScorer(read_archive(model_dir / "model.keras"), blob=blob)(inputs)
    from_keras = runtime.TfliteScorer(predictor.model, blob=blob)(inputs)
    for field in ("probabilities", "heatmaps", "raw", "embeddings"):
        np.testing.assert_array_equal(getattr(from_file, field), getattr(from_keras, field))


SERVE = """
import json, sys, runpy
sys.argv = ["cxr_core", "predict", *sys.argv[1:], "--format", "jsonl"]
try:
    runpy.run_module("cxr_core", run_name="__main__")
finally:
    heavy = ("tensorflow", "keras", "tf_keras", "sklearn", "scipy", "pandas")  # seconds of start, none needed
    print(json.dumps({"imported": sorted(m for m in heavy if m in sys.modules)}))
"""


def test_the_cli_scores_real_films_without_tensorflow_or_scikit_learn_and_as_keras_does(shared_cxr):
    films = [shared_cxr / row["path"] for source in ("shenzhen", "da", "rahmandb") for row in shared_records(source)[:2]]
    env = {k: v for k, v in os.environ.items() if k != "CXR_CLASSIFIER_RUNTIME"}
    done = subprocess.run(
        [sys.executable, "-c", SERVE, *map(str, films)], cwd=PROJECT_ROOT, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    rows, imported = lines[:-1], lines[-1]["imported"]
    assert imported == [], f"the serving process imported {imported}"
    assert [row["file"] for row in rows] == list(map(str, films)) and all(row["ok"] for row in rows)
    keras_served = Predictor(Registry(models_dir()).resolve())
    keras_served.scorer = runtime.KerasScorer(keras_served.model)
    for row, item in zip(rows, keras_served.screen([(str(f), f) for f in films]), strict=True):
        assert abs(row["probability"] - item.prediction.probability) <= TOLERANCE
        assert row["label"] == item.prediction.label


def test_a_lambda_layer_is_refused_by_keras_even_beside_a_valid_twin(tmp_path, monkeypatch):
    from test_privacy import MARKER_ENV

    marker = tmp_path / "code-ran"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    folder = lambda_model_folder(tmp_path, marker)
    assert read_archive(folder / "model.keras") is None
    # a twin whose checksums all match: only the model file's own content can refuse it
    shutil.copyfile(Registry(models_dir()).resolve() / runtime.TFLITE_FILE, folder / runtime.TFLITE_FILE)
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata.update(tflite_sha256=sha256_file(folder / runtime.TFLITE_FILE),
                    tflite_model_sha256=sha256_file(folder / "model.keras"))  # fmt: skip
    (folder / "metadata.json").write_text(json.dumps(metadata))
    assert runtime.read_converted(folder, metadata, "classifier") is not None
    with pytest.raises(ModelError, match="refused: it contains executable code"):
        Predictor(folder)
    assert not marker.exists()


def _variant(source: Path, target: Path, change) -> Path:
    """A copy of a model file whose config.json ``change`` edits (the weights file untouched)."""
    with zipfile.ZipFile(source) as full:
        config = json.loads(full.read("config.json"))
        change(config)
        with zipfile.ZipFile(target, "w") as changed:
            for name in full.namelist():
                changed.writestr(name, json.dumps(config) if name == "config.json" else full.read(name))
    return target


def _layer(config: dict, kind: str) -> dict:
    return next(entry for entry in config["config"]["layers"] if entry["class_name"] == kind)


def test_code_hidden_inside_a_layers_settings_is_refused_by_keras_even_beside_a_valid_twin(tmp_path, monkeypatch):
    """A stored lambda as a regulariser runs nothing when read, but safe mode refuses such a file: so
    must serving, whatever the reader could have read from it."""
    from keras.src.saving import serialization_lib
    from test_privacy import MARKER_ENV

    marker = tmp_path / "code-ran"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    stored = serialization_lib.serialize_keras_object(
        lambda w: __import__("pathlib").Path(__import__("os").environ["CXR_TEST_MARKER"]).write_text("x") or 0.0
    )
    shipped = Registry(models_dir()).resolve()
    folder = tmp_path / "hidden-lambda"
    shutil.copytree(shipped, folder)
    _variant(shipped / "model.keras", folder / "model.keras",
             lambda c: _layer(c, "Dense")["config"].__setitem__("kernel_regularizer", stored))  # fmt: skip
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata.update(model_sha256=sha256_file(folder / "model.keras"),
                    tflite_model_sha256=sha256_file(folder / "model.keras"))  # fmt: skip
    (folder / "metadata.json").write_text(json.dumps(metadata))
    assert read_archive(folder / "model.keras") is None
    assert runtime.read_converted(folder, metadata, "classifier") is not None  # the twin itself checks out
    with pytest.raises(ModelError, match="refused: it contains executable code"):
        Predictor(folder)
    assert not marker.exists()


def test_files_the_reader_does_not_take_are_left_to_keras(tmp_path):
    (source,) = _saved_architectures(tmp_path)[:1]
    not_a_zip = tmp_path / "text.keras"
    not_a_zip.write_text("not a model")
    no_weights = tmp_path / "no-weights.keras"
    with zipfile.ZipFile(source) as full, zipfile.ZipFile(no_weights, "w") as partial:
        partial.writestr("config.json", full.read("config.json"))

    def output_elsewhere(config):  # the graph's output is no longer the last layer listed
        config["config"]["output_layers"] = [config["config"]["layers"][-2]["config"]["name"], 0, 0]

    def extra_argument(config):  # a stored lambda passed to a layer's call beside its input tensor
        config["config"]["layers"][-1]["inbound_nodes"][0]["args"].append({"class_name": "__lambda__", "config": {}})

    def branch(config):  # the last layer is called on the input, not on the layer before it
        args = config["config"]["layers"][-1]["inbound_nodes"][0]["args"]
        args[0]["config"]["keras_history"][0] = config["config"]["layers"][0]["config"]["name"]

    changes = {
        "custom-name": lambda c: _layer(c, "Dense").__setitem__("registered_name", "Custom>Dense"),
        "foreign-initialiser": lambda c: _layer(c, "Dense")["config"].__setitem__(
            "kernel_initializer", {"module": "os", "class_name": "system", "config": {}, "registered_name": None}
        ),
        "lambda-layer-kind": lambda c: _layer(c, "Flatten").__setitem__("class_name", "Lambda"),
        "output-elsewhere": output_elsewhere,
        "branch": branch,
        "extra-argument": extra_argument,
        "no-bias-for-its-stored-bias": lambda c: _layer(c, "Dense")["config"].__setitem__("use_bias", False),
        "side-not-a-number": lambda c: c["config"]["layers"][0]["config"].__setitem__("batch_shape", 7),
        "layers-not-a-list": lambda c: c["config"].__setitem__("layers", "layers"),
    }
    assert read_archive(source) is not None
    assert read_archive(source.read_bytes()) is not None
    variants = [_variant(source, tmp_path / f"{name}.keras", change) for name, change in changes.items()]
    for path in (not_a_zip, no_weights, tmp_path / "missing.keras", *variants):
        assert read_archive(path) is None, path.name
