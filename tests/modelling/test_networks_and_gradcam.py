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
