"""What serving needs from a classifier's ``.keras`` file, read without importing Keras or TensorFlow.

Why: a version with a TFLite twin is served by LiteRT's interpreter, and Grad-CAM's gradient through
the head is taken in numpy (:mod:`cxr_core.modelling.runtime`); the one thing still read from Keras was
the head's weights and the input's side, and importing TensorFlow for them cost about 3 s of every
serving process's start (a CLI run, each archive shard, each worker, the dashboard's first film).

The archive is a zip of ``config.json`` (the layers, in order, with their settings) and
``model.weights.h5``, where Keras stores each layer's variables under ``layers/<name>/vars/<i>``, the
name being the layer's class in snake case, numbered in layer order when a class repeats
(``dense``, ``dense_1``; Keras' own layer names are not used, see ``keras.src.saving.saving_lib``).

Only a plain functional model of Keras' built-in layers is read here. Anything else (a Lambda layer, a
custom or subclassed layer, a nested model, a file that is not a readable archive) returns None, and
the caller loads the file with Keras in safe mode, which serves it or refuses it with its own reasons:
what a file may do is decided by Keras' loader, never by this reader.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUILT_IN_MODULE = "keras.layers"
FUNCTIONAL = ("Functional", "keras.src.models.functional")
# The built-in layers this project's classifiers are made of (networks.py). A file with any other layer,
# a Lambda above all (its config carries Python code), is read by Keras' safe mode instead.
KNOWN_LAYERS = frozenset({
    "InputLayer", "Rescaling", "LayerNormalization", "Conv2D", "BatchNormalization", "ReLU", "Activation",
    "LeakyReLU", "MaxPooling2D", "GlobalAveragePooling2D", "Flatten", "Dropout", "Dense",
})  # fmt: skip


@dataclass(frozen=True)
class ArchiveLayer:
    """One layer of a saved model: its Keras class name, its own name, its settings and its variables."""

    kind: str
    name: str
    config: dict
    weights: tuple[np.ndarray, ...]

    @property
    def kernel(self) -> np.ndarray:
        return self.weights[0]

    @property
    def bias(self) -> np.ndarray:
        return self.weights[1]

    @property
    def activation_name(self) -> str:
        return self.config.get("activation") or "linear"


@dataclass(frozen=True)
class ArchiveModel:
    """A saved functional model's layers in order (input layer excluded) and its square input's side."""

    name: str
    side: int
    layers: tuple[ArchiveLayer, ...]


def snake_case(class_name: str) -> str:
    """Keras' ``naming.to_snake_case``: the key a layer's variables are stored under in the weights file."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def read_archive(source: str | Path | bytes) -> ArchiveModel | None:
    """The layers and weights of a plain chain of built-in layers (a path or the file's bytes); None for
    anything else, so that only Keras' own loader ever judges an unusual file.

    Strict on purpose: every object stored anywhere in a layer's entry (initialisers, regularisers,
    constraints, dtype policies) must be one of Keras' own, registered under no custom name; the layers
    must form one chain from the input to the output, in the order the config lists them (the order the
    head's gradient is taken in); each layer with weights must have the ones its kind has. A file that
    safe mode would refuse is never served through here, even though nothing read here is ever run.
    """
    import h5py

    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as archive:
            config = json.loads(archive.read("config.json"))
            weights_file = archive.read("model.weights.h5")
        if (config.get("class_name"), config.get("module")) != FUNCTIONAL:
            return None
        entries = config["config"]["layers"]
        if not _plain_chain(config["config"], entries):
            return None
        shape = entries[0]["config"]["batch_shape"]
        if len(shape) != 4 or shape[1] != shape[2] or not isinstance(shape[1], int) or shape[1] < 1:
            return None
        used: dict[str, int] = {}
        layers = []
        with h5py.File(io.BytesIO(weights_file), "r") as store:
            for entry in entries:
                key = snake_case(entry["class_name"])
                used[key] = used.get(key, -1) + 1
                stored = f"layers/{key}" if used[key] == 0 else f"layers/{key}_{used[key]}"
                variables = store.get(f"{stored}/vars")
                weights = () if variables is None else tuple(
                    np.asarray(variables[str(i)], np.float32) for i in range(len(variables))
                )  # fmt: skip
                if len(weights) != _expected_weights(entry):
                    return None
                if entry["class_name"] != "InputLayer":
                    layers.append(ArchiveLayer(entry["class_name"], entry["config"]["name"], entry["config"], weights))
    except (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError, zipfile.BadZipFile):
        return None  # not a readable archive of the expected shape: Keras' loader says what is wrong
    return ArchiveModel(str(config["config"].get("name", "")), int(shape[1]), tuple(layers))


def _plain_chain(model_config: dict, entries: list) -> bool:
    """Known built-in layers only, nothing but Keras' own objects inside them, one chain input to output."""
    if not entries or not all(isinstance(entry, dict) and _plain(entry) for entry in entries):
        return False
    if entries[0]["class_name"] != "InputLayer":
        return False
    names = [entry["config"]["name"] for entry in entries]
    ends = ((model_config.get("input_layers"), names[0]), (model_config.get("output_layers"), names[-1]))
    if not all(end in ([name, 0, 0], [[name, 0, 0]]) for end, name in ends):  # Keras writes either form
        return False
    return all(_inputs_of(entry) == [previous] for previous, entry in zip(names, entries[1:], strict=False))


def _inputs_of(entry: dict) -> list[str]:
    """The layers an entry is called on, from its one inbound node's tensors."""
    nodes = entry.get("inbound_nodes") or []
    if len(nodes) != 1:
        return []
    kwargs = nodes[0].get("kwargs") or {}  # Keras writes flags such as training=False or mask=None
    if not all(value is None or isinstance(value, bool | int | float | str) for value in kwargs.values()):
        return []
    args = nodes[0].get("args") or []
    if not all(isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__" and set(arg) <= {"class_name", "config"}
               and _only_keras_objects(arg["config"]) for arg in args):  # fmt: skip
        return []  # anything but tensors passed between layers is Keras' loader's to judge
    return [arg["config"]["keras_history"][0] for arg in args]


def _plain(entry: dict) -> bool:
    """A built-in layer of a known kind whose settings hold only Keras' own objects."""
    return (
        entry.get("module") == BUILT_IN_MODULE
        and entry.get("class_name") in KNOWN_LAYERS
        and entry.get("registered_name") is None
        and isinstance(entry.get("config"), dict)
        and isinstance(entry["config"].get("activation", "linear"), str)
        and _only_keras_objects(entry["config"])
    )


def _only_keras_objects(value) -> bool:
    """No stored object in ``value`` comes from outside Keras, has a custom name or is a Python lambda."""
    if isinstance(value, list):
        return all(_only_keras_objects(item) for item in value)
    if not isinstance(value, dict):
        return True
    if "class_name" in value or "module" in value:
        module = value.get("module")
        if not isinstance(module, str) or not (module == "keras" or module.startswith("keras.")):
            return False
        if value.get("registered_name") is not None or value.get("class_name") == "__lambda__":
            return False
    return all(_only_keras_objects(item) for item in value.values())


def _expected_weights(entry: dict) -> int:
    """How many variables a layer of this kind and these settings stores (0 for the weightless ones)."""
    kind, settings = entry["class_name"], entry["config"]
    if kind in ("Conv2D", "Dense"):
        return 2 if settings.get("use_bias", True) else 1
    if kind == "BatchNormalization":  # gamma, beta, then the moving mean and variance
        return bool(settings.get("scale", True)) + bool(settings.get("center", True)) + 2
    if kind == "LayerNormalization":
        return bool(settings.get("scale", True)) + bool(settings.get("center", True))
    return 0
