"""Serving runtimes: what a converted network returns on real films equals what Keras returns.

A runtime is adopted only if its outputs equal Keras' (|dp| <= 1e-4, issue #23): these tests hold the
converted networks to that on the shared real X-rays, for the shipped classifier, for a network with a
global-average-pooling head (the "CAM" design, whose Grad-CAM the runtime takes from the dense weights),
and for the lung model that serves with TFLite, end to end through the crop the classifier sees.
"""

import shutil

import numpy as np
import pytest
from conftest import shared_records

from cxr_core.errors import ModelError
from cxr_core.imaging.preprocess import to_model_input
from cxr_core.modelling import lungs, runtime
from cxr_core.modelling.predictor import Predictor
from cxr_core.registry.store import Registry
from cxr_core.settings import lung_models_dir, models_dir

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def real_films(shared_cxr):
    rows = [row for source in ("tbx11k", "shenzhen", "da", "rahmandb") for row in shared_records(source)[:6]]
    return [shared_cxr / row["path"] for row in rows]


@pytest.fixture(scope="module")
def shipped(real_films):
    predictor = Predictor(Registry(models_dir()).resolve())
    inputs = np.stack([predictor.model_input(path).pixels for path in real_films])
    return predictor, inputs


def cam_network(side: int = 128):
    """The GAP-headed design: conv-BN-ReLU stages, GAP named ``embedding``, one sigmoid Dense."""
    import keras
    from keras import layers

    inputs = keras.Input((side, side, 1), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    for stage, count in enumerate((8, 16, 32), start=1):
        if stage > 1:
            x = layers.MaxPooling2D(2, name=f"pool{stage - 1}")(x)
        x = layers.Conv2D(count, 3, padding="same", use_bias=False, name=f"conv{stage}")(x)
        x = layers.BatchNormalization(name=f"bn{stage}")(x)
        x = layers.ReLU(name=f"relu{stage}")(x)
    x = layers.GlobalAveragePooling2D(name="embedding")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="tb_probability")(x)
    model = keras.Model(inputs, outputs, name="tb_cam")
    rng = np.random.default_rng(0)  # moving statistics other than 0/1, as a trained network has
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n),
                               rng.uniform(0.5, 2.0, n)])  # fmt: skip
    return model


def assert_equal_to_keras(model, inputs):
    expected = runtime.KerasScorer(model)(inputs)
    got = runtime.TfliteScorer(model)(inputs)
    alone = runtime.TfliteScorer(model)(inputs[:1])  # one upload: a batch of one
    assert np.abs(got.probabilities - expected.probabilities).max() <= TOLERANCE
    assert np.abs(alone.probabilities - expected.probabilities[:1]).max() <= TOLERANCE
    assert np.abs(got.heatmaps - expected.heatmaps).max() <= TOLERANCE
    assert np.abs(got.raw - expected.raw).max() <= TOLERANCE * max(1.0, float(expected.raw.max()))
    assert np.abs(got.embeddings - expected.embeddings).max() <= TOLERANCE * max(
        1.0, float(np.abs(expected.embeddings).max())
    )
    assert expected.heatmaps.max() > 0  # the maps compared are not all zero
    return expected


def test_the_shipped_classifier_converted_to_tflite_scores_real_films_as_keras_does(shipped):
    predictor, inputs = shipped
    expected = assert_equal_to_keras(predictor.model, inputs)
    assert expected.probabilities.min() < 0.5 < expected.probabilities.max()  # both kinds of films


def test_a_gap_headed_network_gets_grad_cam_from_its_dense_weights(shipped):
    _, inputs = shipped
    model = cam_network()
    _, head, output = runtime.split_at_features(model)
    assert [layer.name for layer in head] == ["embedding"] and output.name == "tb_probability"
    expected = assert_equal_to_keras(model, inputs)
    features = runtime.forward_model(model)(inputs.astype(np.float32)[..., None])[2].numpy()
    weights = np.asarray(output.kernel)[:, 0] / (features.shape[1] * features.shape[2])
    cam = np.maximum((features * weights).sum(axis=-1), 0)  # CAM, scaled as Grad-CAM's mean gradient
    np.testing.assert_allclose(cam, expected.raw, atol=1e-5)


def test_a_head_without_a_known_gradient_is_refused_not_served_wrong():
    import keras
    from keras import layers

    inputs = keras.Input((32, 32, 1))
    x = layers.Conv2D(4, 3, name="conv1")(inputs)
    x = layers.Flatten()(x)
    x = layers.LayerNormalization()(x)
    model = keras.Model(inputs, layers.Dense(1, activation="sigmoid", name="tb_probability")(x))
    with pytest.raises(runtime.UnsupportedModel, match="LayerNormalization"):
        runtime.TfliteScorer(model)


@pytest.fixture(scope="module")
def served_lungs():
    """The newest registered lung model that carries a converted twin (the lung models since #23)."""
    registry = Registry(lung_models_dir())
    versions = [m["version"] for m in registry.versions()]
    versions = [v for v in versions if (registry.version_dir(v) / runtime.LUNG_TFLITE).is_file()]
    assert versions, "the project ships a lung model converted to TFLite"
    return lungs.LungModel(registry.version_dir(versions[-1]))


def test_the_lung_model_serves_with_its_tflite_twin_and_finds_the_same_lungs(
    served_lungs, real_films, monkeypatch
):
    from cxr_core.imaging.decode import read_image

    assert served_lungs.runtime == "tflite"
    monkeypatch.setenv("CXR_LUNG_RUNTIME", "keras")
    keras_lungs = lungs.LungModel(served_lungs.model_dir)
    assert keras_lungs.runtime == "keras"
    grays = [read_image(path).pixels for path in real_films]
    smalls = [served_lungs.lung_input(gray)[0] for gray in grays]
    got, expected = served_lungs.probabilities(smalls), keras_lungs.probabilities(smalls)
    assert np.abs(np.stack(got) - np.stack(expected)).max() <= TOLERANCE
    one, one_expected = served_lungs.segment(grays[0]), keras_lungs.segment(grays[0])
    assert one["ok"] and lungs.dice(one["mask"], one_expected["mask"]) > 0.999
    # the file is what the project's own conversion of model.keras gives, not something else
    fresh = runtime.lung_forward(keras_lungs.model, "tflite")(np.stack(smalls))
    assert np.abs(fresh - np.stack(got)).max() <= 1e-6


def test_the_classifier_scores_the_same_through_either_lung_runtime(
    served_lungs, shipped, real_films, monkeypatch
):
    predictor, _ = shipped
    monkeypatch.setenv("CXR_LUNG_RUNTIME", "keras")
    keras_lungs = lungs.LungModel(served_lungs.model_dir)
    options = {"crop_to_lungs": True, "lung_margin": predictor.lung_margin}
    crops = [
        to_model_input(path, predictor.side, lungs=served_lungs, **options).pixels for path in real_films
    ]
    crops_keras = [
        to_model_input(path, predictor.side, lungs=keras_lungs, **options).pixels for path in real_films
    ]
    scored = predictor.predict(np.stack(crops)[..., None])
    scored_keras = predictor.predict(np.stack(crops_keras)[..., None])
    dp = max(abs(a.probability - b.probability) for a, b in zip(scored, scored_keras, strict=True))
    assert dp <= TOLERANCE


def test_a_damaged_converted_lung_model_is_refused(served_lungs, tmp_path):
    copy = tmp_path / "lungs"
    shutil.copytree(served_lungs.model_dir, copy)
    data = bytearray((copy / runtime.LUNG_TFLITE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / runtime.LUNG_TFLITE).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="converted lung model .* corrupt"):
        lungs.LungModel(copy)


@pytest.mark.parametrize("kind", ["gradient", "noise", "text page", "photo"])
def test_the_converted_lung_model_still_refuses_pictures_with_no_lungs(kind, served_lungs):
    import cv2
    from test_lungs import _negatives

    from cxr_core.errors import ImageError
    from cxr_core.imaging.preprocess import NOT_A_CHEST

    data = cv2.imencode(".png", _negatives()[kind])[1].tobytes()
    with pytest.raises(ImageError) as refused:
        to_model_input(data, lungs=served_lungs)
    message = str(refused.value)
    assert message.startswith(NOT_A_CHEST) or "blank" in message or "flat" in message, message


def test_the_converted_lung_model_passes_real_xrays_of_every_source(served_lungs, shared_cxr):
    for source in ("tbx11k", "openist", "shenzhen", "da", "rahmandb"):
        for row in shared_records(source)[:4]:
            found = to_model_input(shared_cxr / row["path"], lungs=served_lungs).lungs
            assert found["ok"] and 0.05 < found["area_fraction"] < 0.65, (row["path"], found["reason"])
