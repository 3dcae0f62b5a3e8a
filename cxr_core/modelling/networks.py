"""The networks (the original reference CNN and the compact network that ships), saved and loaded one way.

``build_network(side, model_settings)`` is the one factory the pipeline calls; ``model.architecture`` in
``params.yaml`` picks the network, so the reference stays selectable for every comparison.

The reference architecture is the original design's (three 3x3 ReLU convolutions of 16, 32 and 64 filters, each
followed by 2x2 max pooling, a 64-unit dense layer, dropout 0.5, one sigmoid output), built with the
functional API: Keras 3 refuses ``model.output`` on a Sequential model that was never called, which is
what Grad-CAM and the embedding for out-of-distribution checks need. Layers carry stable names so those
consumers can find them. A ``Rescaling`` layer maps the uint8 input to [0, 1] inside the model, so the
same uint8 arrays flow from shards in training and from :func:`cxr_core.imaging.preprocess.preprocess` in
serving.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: serving reads these names without importing Keras
    import keras

LAST_CONV = "conv3"
EMBEDDING = "embedding"
OUTPUT = "tb_probability"


def build_model(
    side: int = 128,
    filters: tuple[int, ...] | list[int] = (16, 32, 64),
    dense_units: int = 64,
    dropout: float = 0.5,
    kernel_size: int = 3,
) -> keras.Model:
    """Build the reference network; sizes come from ``params.yaml`` (``model`` section)."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(side, side, 1), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    for index, count in enumerate(filters, start=1):
        x = layers.Conv2D(count, kernel_size, activation="relu", name=f"conv{index}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{index}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, activation="relu", name=EMBEDDING)(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name=OUTPUT)(x)
    return keras.Model(inputs, outputs, name="tb_cnn")


def build_compact_model(
    side: int = 128,
    filters: tuple[int, ...] | list[int] = (16, 32, 64, 96, 128),
    dense_units: int = 64,
    dropout: float = 0.3,
) -> keras.Model:
    """Conv-BN-ReLU stages with 2x2 max pooling between them, global average pooling, a small head.

    Global average pooling instead of Flatten: the head has no weight tied to a position, so a corner
    or border cue cannot be wired straight into the decision, and the network stays small (~0.2 M
    parameters) for a fast CPU. The last stage has no pooling after it, so Grad-CAM sees
    ``side / 2**(stages - 1)`` cells (8x8 at 128 px). A plain chain of layers, as Grad-CAM requires.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=(side, side, 1), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    for stage, count in enumerate(filters, start=1):
        if stage > 1:
            x = layers.MaxPooling2D(2, name=f"pool{stage - 1}")(x)
        x = layers.Conv2D(count, 3, padding="same", use_bias=False, name=f"conv{stage}")(x)
        x = layers.BatchNormalization(name=f"bn{stage}")(x)
        x = layers.ReLU(name=f"relu{stage}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout_gap")(x)
    x = layers.Dense(dense_units, activation="relu", name=EMBEDDING)(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name=OUTPUT)(x)
    return keras.Model(inputs, outputs, name="tb_cnn_compact")


def build_cam_model(
    side: int = 128,
    filters: tuple[int, ...] | list[int] = (16, 32, 64, 128, 128),
    pools: int = 3,
    dropout: float = 0.3,
    dense_units: int = 0,
    standardize: bool = False,
) -> keras.Model:
    """Conv-BN-ReLU stages, global average pooling and ONE sigmoid unit: a network whose map is its reason.

    With nothing but a linear unit after the average pooling, the film's logit is the mean over
    positions of ``features . w`` (plus a bias), so Grad-CAM is exactly the class activation map: each
    cell's share of the decision, with no hidden layer to move evidence around. That is what lets the
    training loss look at the same map a clinician sees (see :mod:`cxr_core.pipeline.train`), and
    what keeps a corner cue from being wired into the decision by a position-tied weight. Only the first
    ``pools`` stages are followed by 2x2 pooling, so the map keeps ``side / 2**pools`` cells a side
    (16x16 at 128 px): lesions are small. ``dense_units`` is accepted for settings compatibility and
    must stay 0. ``standardize`` gives every film zero mean and unit variance before the first
    convolution (a LayerNormalization over the whole picture, nothing learnt): a hospital's exposure and
    processing set a film's overall brightness and contrast, which the shortcut audit reads as the site.
    Keras' epsilon (1e-3) is kept as the ablation measured it: next to a film's variance in [0, 1] units
    (about 0.02-0.06) it damps the flattest films a little rather than amplifying their noise.
    """
    import keras
    from keras import layers

    if dense_units:
        raise ValueError("the CAM network has no hidden dense layer (model.dense_units must be 0)")
    inputs = keras.Input(shape=(side, side, 1), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    if standardize:
        x = layers.LayerNormalization(axis=(1, 2, 3), center=False, scale=False, name="per_film_standardize")(x)
    for stage, count in enumerate(filters, start=1):
        if 1 < stage <= pools + 1:
            x = layers.MaxPooling2D(2, name=f"pool{stage - 1}")(x)
        x = layers.Conv2D(count, 3, padding="same", use_bias=False, name=f"conv{stage}")(x)
        # momentum 0.9: the moving statistics settle within an epoch of a small data set (at Keras'
        # 0.99 a short run served with statistics of its first batches and scored every film alike)
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{stage}")(x)
        x = layers.ReLU(name=f"relu{stage}")(x)
    x = layers.GlobalAveragePooling2D(name=EMBEDDING)(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name=OUTPUT)(x)
    return keras.Model(inputs, outputs, name="tb_cam_net")


def feature_layer_name(model: keras.Model) -> str:
    """The activation Grad-CAM weighs: the last convolution's output after its normalisation and ReLU."""
    return model.layers[features_end([layer.__class__.__name__ for layer in model.layers]) - 1].name


# Layers that act on each position of a map alone: the maps Grad-CAM weighs run through them.
PER_POSITION_LAYERS = frozenset({"BatchNormalization", "ReLU", "Activation", "LeakyReLU"})


def features_end(kinds: list[str]) -> int:
    """Where the feature maps end in a chain of layers given by their Keras class names: after the deepest
    convolution and the per-position layers that follow it.

    One rule for the Grad-CAM of training (Keras layers), of serving (layers read from the archive
    without Keras) and for the evidence loss, so the three weigh the same maps."""
    end = _deepest_convolution(kinds) + 1
    while end < len(kinds) and kinds[end] in PER_POSITION_LAYERS:
        end += 1
    return end


def _deepest_convolution(kinds: list[str]) -> int:
    convolutions = [index for index, kind in enumerate(kinds) if kind == "Conv2D"]
    if not convolutions:
        raise ValueError("model has no convolution layer for Grad-CAM")
    return convolutions[-1]


ARCHITECTURES = {"reference": build_model, "compact": build_compact_model, "cam": build_cam_model}


def build_network(side: int, model_settings: dict) -> keras.Model:
    """The network named by ``model_settings["architecture"]``, sized by the rest of the settings."""
    settings = dict(model_settings)
    name = settings.pop("architecture", "reference")
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
    standardize = bool(settings.pop("standardize", False))
    if name == "cam":
        settings["standardize"] = standardize
    elif standardize:
        raise ValueError("model.standardize is built into the cam architecture only")
    return ARCHITECTURES[name](side=side, **settings)


def last_conv_name(model: keras.Model) -> str:
    """The deepest convolution, where Grad-CAM looks (``conv3`` for the reference sizes)."""
    return model.layers[_deepest_convolution([layer.__class__.__name__ for layer in model.layers])].name


def save_model(model: keras.Model, path: str | Path) -> Path:
    """Save weights and architecture in the native ``.keras`` format without optimizer state.

    The optimizer's slots would double the file and are useless for serving; rebuilding an
    uncompiled copy from the config is the reliable way to drop them in Keras 3.
    """
    import keras

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = keras.Model.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    tmp = path.with_name(path.name + ".tmp.keras")
    clean.save(tmp)
    os.replace(tmp, path)
    return path


def load_model(path: str | Path) -> keras.Model:
    """Load for inference only: no compile step, and safe mode so a model file cannot run code."""
    import keras

    return keras.saving.load_model(str(path), compile=False, safe_mode=True)
