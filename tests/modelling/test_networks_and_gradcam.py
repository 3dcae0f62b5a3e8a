"""The reference CNN, its save/load round trip, and Grad-CAM on real TensorFlow."""

import numpy as np
import pytest
from PIL import Image

from cxr_core.imaging.preprocess import preprocess_with_box
from cxr_core.modelling.gradcam import GradCam, overlay
from cxr_core.modelling.networks import build_model, load_model, save_model


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(0)
    return build_model()


def test_architecture_matches_the_reference_design(model):
    import keras

    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert [c.filters for c in convs] == [16, 32, 64]
    assert all(c.kernel_size == (3, 3) and c.activation.__name__ == "relu" for c in convs)
    assert len(pools) == 3
    assert model.input_shape == (None, 128, 128, 1)
    assert model.get_layer("embedding").units == 64
    assert model.get_layer("dropout").rate == 0.5
    assert model.output_shape == (None, 1)
    assert model.get_layer("tb_probability").activation.__name__ == "sigmoid"


def test_save_has_no_optimizer_and_loads_in_safe_mode(model, tmp_path):
    import zipfile

    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(np.zeros((4, 128, 128, 1), np.float32), np.array([0, 1, 0, 1], np.float32), epochs=1, verbose=0)
    path = save_model(model, tmp_path / "model.keras")
    names = zipfile.ZipFile(path).namelist()
    assert not any("optimizer" in name for name in names)
    loaded = load_model(path)
    x = np.random.default_rng(0).integers(0, 255, (3, 128, 128, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-6)


def test_gradcam_on_a_loaded_model_matches_predictions_and_has_gradients(model, tmp_path, real_xray_path):
    path = save_model(model, tmp_path / "m.keras")
    loaded = load_model(path)
    gray = np.array(Image.open(real_xray_path).convert("L"))
    small, box = preprocess_with_box(gray)
    batch = np.stack([small, np.flipud(small)])[..., None]
    result = GradCam(loaded)(batch)
    np.testing.assert_allclose(
        result.probabilities, loaded(batch.astype(np.float32), training=False).numpy()[:, 0], atol=1e-5
    )
    assert result.heatmaps.shape == (2, 28, 28)
    assert np.isfinite(result.heatmaps).all() and result.heatmaps.max() > 0, "gradients must not vanish"
    assert result.embeddings.shape == (2, 64)
    picture = overlay(gray, result.heatmaps[0], box, alpha=0.5)
    assert picture.shape == (*gray.shape, 3) and picture.dtype == np.uint8
    assert not np.array_equal(picture[..., 0], picture[..., 2]), "overlay must add colour"


def test_gradcam_does_not_retrace_for_new_batch_sizes(model):
    cam = GradCam(model)
    for n in (1, 3, 7):
        cam(np.zeros((n, 128, 128, 1), np.uint8))
    assert cam._run.experimental_get_tracing_count() == 1


def _brightness_model():
    """A network whose score is the mean brightness of the frame: the evidence is where the image is bright."""
    import keras

    inputs = keras.Input(shape=(128, 128, 1), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    x = keras.layers.Conv2D(1, 1, kernel_initializer="ones", bias_initializer="zeros", name="conv1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros", name="embedding")(x)
    outputs = keras.layers.Dense(
        1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(200.0),
        bias_initializer=keras.initializers.Constant(-2.0), name="tb_probability",
    )(x)  # fmt: skip
    return keras.Model(inputs, outputs)


def test_heatmap_peaks_in_the_region_that_drives_the_score():
    model = _brightness_model()
    image = np.zeros((1, 128, 128, 1), np.uint8)
    image[0, 80:112, 16:48] = 255  # the only evidence: a bright block, low and to the left
    result = GradCam(model)(image)
    peak = np.unravel_index(np.argmax(result.heatmaps[0]), result.heatmaps[0].shape)
    assert 80 <= peak[0] < 112 and 16 <= peak[1] < 48, peak
    assert result.heatmaps[0][:64].max() == 0, "no evidence may be shown where the image is empty"


def test_heatmaps_are_on_an_absolute_scale():
    """A film with weak evidence must not be painted as red as one with strong evidence."""
    model = _brightness_model()
    films = np.zeros((2, 128, 128, 1), np.uint8)
    films[0, 40:60, 40:60] = 40  # weak evidence
    films[1, 40:60, 40:60] = 255  # strong evidence
    result = GradCam(model)(films)
    assert result.probabilities[0] < 0.25 < 0.9 < result.probabilities[1]
    assert result.heatmaps[1].max() == pytest.approx(result.probabilities[1])
    assert result.heatmaps[0].max() < 0.25  # per-film scaling would have shown 1.0 here too
    # where the evidence lies is unchanged by the scale: both films light up the same block only
    for heat in result.heatmaps:
        assert heat[40:60, 40:60].min() == pytest.approx(heat.max()) and heat[:40].max() == 0


def test_compact_network_is_small_and_gradcam_reads_its_last_activation():
    from cxr_core.modelling.networks import build_network

    net = build_network(128, {"architecture": "compact", "filters": [8, 16, 32, 48, 64], "dense_units": 32,
                              "dropout": 0.3})  # fmt: skip
    assert net.count_params() < 300_000
    batch = np.random.default_rng(1).integers(0, 255, (2, 128, 128, 1)).astype(np.uint8)
    result = GradCam(net)(batch)
    assert result.heatmaps.shape == (2, 8, 8) and result.embeddings.shape == (2, 32)
    np.testing.assert_allclose(
        result.probabilities, net(batch.astype(np.float32), training=False).numpy()[:, 0], atol=1e-5
    )
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network(128, {"architecture": "transformer"})


def test_a_standardised_cam_network_ignores_a_films_overall_brightness_and_contrast(real_xray_path, tmp_path):
    import keras

    from cxr_core.modelling.networks import build_network

    keras.utils.set_random_seed(0)  # an untrained network: fix it (seeds 0-5 all pass)
    settings = {"architecture": "cam", "filters": [8, 16, 32, 32, 32], "dense_units": 0, "dropout": 0.3}
    net = build_network(128, {**settings, "standardize": True})
    plain = build_network(128, settings)
    gray = np.array(Image.open(real_xray_path).convert("L"))
    small, _ = preprocess_with_box(gray)
    darker_flatter = np.clip(small.astype(np.float32) * 0.7 + 20, 0, 255).round().astype(np.uint8)
    batch = np.stack([small, darker_flatter])[..., None]
    loaded = load_model(save_model(net, tmp_path / "standardised.keras"))  # the layer survives a reload
    result = GradCam(loaded)(batch)
    assert abs(result.probabilities[0] - result.probabilities[1]) < 2e-3, "rounding to uint8 is the only change"
    first, second = result.heatmaps.reshape(2, -1)
    assert first.max() > 0 and np.corrcoef(first, second)[0, 1] > 0.95, "the map stays where it was"
    # without the layer the same two films are two different inputs to the network
    unstandardised = plain(batch.astype(np.float32), training=False).numpy()[:, 0]
    standardised_raw = net(batch.astype(np.float32), training=False).numpy()[:, 0]
    assert abs(unstandardised[0] - unstandardised[1]) > 10 * abs(standardised_raw[0] - standardised_raw[1])
    with pytest.raises(ValueError, match="cam architecture only"):
        build_network(128, {"architecture": "reference", "filters": [16, 32, 64], "dense_units": 64,
                            "dropout": 0.5, "standardize": True})  # fmt: skip
