"""Films that share one lung-network call get exactly what each would get alone (shipped models)."""

import cv2
import numpy as np
import pytest
from conftest import shared_records

from cxr_core.errors import CxrError
from cxr_core.imaging.preprocess import NOT_A_CHEST, decode_for_model, finish_model_inputs, to_model_input
from cxr_core.modelling import lungs as lung_module
from cxr_core.modelling.predictor import Predictor, predict_paths
from cxr_core.registry.store import Registry


@pytest.fixture(scope="module")
def predictor():
    model_dir, _ = Registry().resolve_with_warning(None)
    found = Predictor(model_dir)
    assert found.lungs is not None, "the shipped classifier runs with its lung model"
    return found


@pytest.fixture(scope="module")
def films(shared_cxr):
    picked = [
        row
        for source in ("tbx11k", "openist", "shenzhen", "da", "rahmandb")
        for row in shared_records(source)[:3]
    ]
    return [shared_cxr / row["path"] for row in picked]


def test_a_batch_gives_each_film_the_crop_it_gets_alone_and_keeps_refusals_in_place(predictor, films):
    ramp = np.tile(np.linspace(0, 255, 512, dtype=np.float32), (512, 1)).astype(np.uint8)
    not_a_chest = cv2.imencode(".png", ramp)[1].tobytes()
    sources = [*films[:7], not_a_chest, b"not an image at all", *films[7:]]
    decoded = []
    for source in sources:
        try:
            decoded.append(decode_for_model(source, lungs=predictor.lungs))
        except CxrError as error:
            decoded.append(error)
    batched = finish_model_inputs(decoded, predictor.side, **predictor.lung_options())

    assert len(batched) == len(sources)
    assert isinstance(batched[7], CxrError) and str(batched[7]).startswith(NOT_A_CHEST)
    assert isinstance(batched[8], CxrError) and "not an image" in str(batched[8])
    readable = [index for index in range(len(sources)) if index not in (7, 8)]
    assert len(readable) == len(films)
    for index in readable:
        source, result = sources[index], batched[index]
        assert not isinstance(result, CxrError), (index, result)
        alone = to_model_input(source, predictor.side, **predictor.lung_options())
        assert result.box == alone.box and result.lungs["box"] == alone.lungs["box"]
        np.testing.assert_array_equal(result.pixels, alone.pixels)


def test_lung_probabilities_of_a_batch_match_one_call_per_film_to_float_rounding(predictor, films):
    from cxr_core.imaging.decode import read_image

    smalls = [predictor.lungs.lung_input(read_image(path).pixels)[0] for path in films]
    together = predictor.lungs.probabilities(smalls)
    for small, batched in zip(smalls, together, strict=True):
        alone = lung_module.predict_small(predictor.lungs.model, small)
        np.testing.assert_allclose(batched, alone, atol=1e-4)


def test_the_cli_scores_a_folder_as_the_page_scores_each_film_alone(predictor, films):
    rows = {row["file"]: row for row in predict_paths([str(path) for path in films], predictor)}
    for path in films:
        alone = predictor.screen([(str(path), path)])[0]
        row = rows[str(path)]
        assert row["ok"] and alone.ok
        assert row["probability"] == pytest.approx(alone.prediction.probability, abs=1e-5)
        assert row["label"] == alone.prediction.label


def test_the_lung_box_is_the_bounding_box_of_the_mask():
    mask = np.zeros((50, 40), np.uint8)
    assert lung_module.mask_box(mask) == (0, 0, 0, 0)
    mask[7:30, 3:11] = 255
    mask[12:41, 20:37] = 255
    ys, xs = np.nonzero(mask)
    assert lung_module.mask_box(mask) == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (7, 3, 41, 37)
