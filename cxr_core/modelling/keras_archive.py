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


def read_archive(path: str | Path) -> ArchiveModel | None:
    """The layers and weights of a plain functional model of built-in layers; None for anything else."""
    import h5py

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            weights_file = archive.read("model.weights.h5")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if (config.get("class_name"), config.get("module")) != FUNCTIONAL:
        return None
    entries = config.get("config", {}).get("layers", [])
    if not entries or not all(_plain(entry) for entry in entries):
        return None
    if entries[0].get("class_name") != "InputLayer":
        return None
    shape = entries[0]["config"].get("batch_shape") or []
    if len(shape) != 4 or shape[1] != shape[2] or not shape[1]:
        return None
    used: dict[str, int] = {}
    layers = []
    try:
        with h5py.File(io.BytesIO(weights_file), "r") as store:
            for entry in entries:
                key = snake_case(entry["class_name"])
                used[key] = used.get(key, -1) + 1
                stored = f"layers/{key}" if used[key] == 0 else f"layers/{key}_{used[key]}"
                variables = store.get(f"{stored}/vars")
                weights = () if variables is None else tuple(
                    np.asarray(variables[str(i)], np.float32) for i in range(len(variables))
                )  # fmt: skip
                if entry["class_name"] != "InputLayer":
                    layers.append(ArchiveLayer(entry["class_name"], entry["config"]["name"], entry["config"], weights))
    except (OSError, KeyError, ValueError):
        return None
    return ArchiveModel(config["config"].get("name", ""), int(shape[1]), tuple(layers))


def _plain(entry: dict) -> bool:
    """A built-in layer of a known kind, registered under no custom name, with a named activation."""
    return (
        entry.get("module") == BUILT_IN_MODULE
        and entry.get("class_name") in KNOWN_LAYERS
        and entry.get("registered_name") is None
        and isinstance(entry.get("config"), dict)
        and isinstance(entry["config"].get("activation", "linear"), str)
    )
