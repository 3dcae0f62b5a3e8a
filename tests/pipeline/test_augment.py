"""The fused training warp: same random parameters as the chain of Keras layers, one resampling."""

import keras  # a hard dependency (requirements.txt): missing, it must fail, never skip
import numpy as np
import pytest
import tensorflow as tf

from cxr_core.pipeline import augment
from cxr_core.settings import load_params

AUGMENT = load_params()["train"]["augment"]


def _films(count: int = 16, side: int = 128) -> np.ndarray:
    """Smooth, film-like pictures (a bright chest on a dark surround with two darker lung fields)."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    rng = np.random.default_rng(0)
    films = []
    for _ in range(count):
        cy, cx = rng.uniform(0.45, 0.55, 2)
        body = 200 * np.exp(-(((yy - cy) / 0.45) ** 2 + ((xx - cx) / 0.4) ** 2))
        lungs = 90 * (
            np.exp(-(((yy - 0.45) / 0.2) ** 2 + ((xx - 0.3) / 0.1) ** 2))
            + np.exp(-(((yy - 0.45) / 0.2) ** 2 + ((xx - 0.7) / 0.1) ** 2))
        )
        films.append(np.clip(body - lungs + 20, 0, 255))
    return np.stack(films)[..., None].astype(np.float32)


def _chain(settings: dict, seed: int):
    """The former augmentation: each warp a Keras layer with its own bilinear resampling."""
    fill = settings["fill_mode"]
    return keras.Sequential(
        [
            keras.layers.RandomRotation(settings["rotation"], fill_mode=fill, fill_value=0.0, seed=seed),
            keras.layers.RandomZoom(
                (-settings["zoom_in"], settings["zoom_out"]), fill_mode=fill, fill_value=0.0, seed=seed + 1
            ),
            keras.layers.RandomTranslation(
                settings["translation"],
                settings["translation"],
                fill_mode=fill,
                fill_value=0.0,
                seed=seed + 2,
            ),
            keras.layers.RandomContrast(settings["contrast"], value_range=(0, 255), seed=seed + 3),
            keras.layers.RandomBrightness(settings["brightness"], value_range=(0, 255), seed=seed + 4),
        ]
    )


def test_the_fused_warp_draws_what_the_chain_of_layers_draws_and_resamples_once():
    films = tf.constant(_films())
    chained = _chain(AUGMENT, 42)(films, training=True).numpy()
    fused = augment._geometric_and_exposure(AUGMENT, 42)(films)[0].numpy()
    other_seed = augment._geometric_and_exposure(AUGMENT, 7)(films)[0].numpy()
    inner = (slice(None), slice(16, 112), slice(16, 112))
    same = np.abs(chained - fused)[inner].mean()
    different = np.abs(other_seed - fused)[inner].mean()
    # same angles, zooms, shifts, contrast and brightness: only the interpolation differs (one pass, not three)
    assert same < 3.0, same
    assert different > 5 * same, (same, different)


def test_composed_matrices_apply_the_warps_in_their_order():
    zoom = augment._zoom_matrix(
        {"width_zoom": tf.constant([[0.5]]), "height_zoom": tf.constant([[0.5]])}, (1, 101, 101, 1)
    )
    shift = augment._translation_matrix(tf.constant([[10.0, -4.0]]))
    composed = augment._compose(zoom, shift).numpy()[0]
    # output point p: the shift moves it to p - (10, -4), the zoom then reads 0.5 * that + 25
    x, y = 60.0, 30.0
    expect = (0.5 * (x - 10.0) + 25.0, 0.5 * (y + 4.0) + 25.0)
    got = (composed[0] * x + composed[1] * y + composed[2], composed[3] * x + composed[4] * y + composed[5])
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    np.testing.assert_allclose(composed[6:], 0.0)


def test_training_batches_are_augmented_within_range():
    films = _films(8).astype(np.uint8)
    train = load_params()["train"]
    dataset = augment.training_dataset(
        films, np.zeros(8, np.int32), np.ones(8, np.float32), {**train, "batch_size": 8}, 0
    )
    x, y, w = next(iter(dataset))
    assert x.shape == (8, 128, 128, 1) and float(tf.reduce_min(x)) >= 0 and float(tf.reduce_max(x)) <= 255
    assert not np.allclose(x.numpy(), films.astype(np.float32))


def test_the_blur_of_the_sharpness_augmentation_is_opencvs_gaussian_with_reflected_edges():
    import cv2

    films = _films(2)
    blurred = augment._gaussian_blur(tf.constant(films), augment.SHARPNESS_SIGMA).numpy()
    for film, ours in zip(films, blurred, strict=True):
        theirs = cv2.GaussianBlur(film[..., 0], (7, 7), augment.SHARPNESS_SIGMA, borderType=cv2.BORDER_REFLECT_101)
        np.testing.assert_allclose(ours[..., 0], theirs, atol=1e-3)


def test_the_sharpness_augmentation_blurs_some_films_and_edge_enhances_others():
    """Each film gets its own unsharp-mask amount in [-1, 1]: both directions occur in one batch."""
    films = np.random.default_rng(1).uniform(0, 255, (64, 32, 32, 1)).astype(np.float32)
    detail = films - augment._gaussian_blur(tf.constant(films), augment.SHARPNESS_SIGMA).numpy()
    changed = augment._sharpness(tf.constant(films), 1.0, seed=7).numpy()
    amounts = ((changed - films) * detail).sum(axis=(1, 2, 3)) / (detail * detail).sum(axis=(1, 2, 3))
    residual = changed - films - amounts[:, None, None, None] * detail
    assert np.abs(residual).max() < 1e-2  # exactly x + a * (x - blur(x)), one a per film
    assert amounts.min() >= -1.0 - 1e-4 and amounts.max() <= 1.0 + 1e-4
    assert (amounts < -0.3).sum() >= 10 and (amounts > 0.3).sum() >= 10


def test_the_sharpness_recipe_trains_with_it_and_the_shipped_default_does_not():
    from cxr_core.settings import with_recipe

    assert with_recipe(load_params()["train"], "cam-evidence-sharpness")["augment"]["sharpness"] == 1.0
    assert load_params()["train"]["augment"]["sharpness"] == 0.0


def test_the_evidence_targets_pool_to_each_cells_block_mean_as_valid_average_pooling_does():
    """Each map cell is its block's share of target pixels; rows and columns that fill no cell drop."""
    rng = np.random.default_rng(3)
    for shape, factor in [((3, 128, 128, 2), 4), ((2, 130, 127, 1), 4), ((2, 96, 96, 2), 3)]:
        targets = ((rng.random(shape) < 0.4) * 255).astype(np.uint8)
        pooled = augment.pool_to_map(targets, factor).numpy()
        rows, cols = shape[1] // factor, shape[2] // factor
        blocks = targets[:, : rows * factor, : cols * factor] / 255.0
        expected = blocks.reshape(shape[0], rows, factor, cols, factor, shape[3]).mean(axis=(2, 4))
        np.testing.assert_allclose(pooled, expected, atol=1e-6)
        reference = tf.nn.avg_pool2d(tf.cast(targets, tf.float32) / 255.0, factor, factor, "VALID").numpy()
        np.testing.assert_allclose(pooled, reference, atol=1e-6)
    warped = tf.constant(rng.uniform(0, 255, (4, 128, 128, 2)).astype(np.float32))  # after a warp: not 0/255
    np.testing.assert_allclose(
        augment.pool_to_map(warped, 4).numpy(),
        tf.nn.avg_pool2d(warped / 255.0, 4, 4, "VALID").numpy(),
        atol=1e-6,
    )


def _lung_targets(count: int = 8, side: int = 128) -> np.ndarray:
    """0/255 targets: two lung-shaped ellipses per film, clear of the edges, jittered per film."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    rng = np.random.default_rng(5)
    out = np.zeros((count, side, side, 2), np.uint8)
    for i in range(count):
        dy, dx = rng.uniform(-0.05, 0.05, 2)
        for cx in (0.32, 0.68):
            inside = ((yy - 0.48 - dy) / 0.28) ** 2 + ((xx - cx - dx) / 0.13) ** 2 < 1
            out[i, inside, 0] = 255
        out[i, 40:60, 30:50, 1] = 255  # a lesion box
    return out


def test_targets_warped_at_a_quarter_side_give_the_maps_cells_of_the_full_size_warp():
    """The training input warps the evidence targets small: the map's cells must stay what they were."""
    targets = _lung_targets()
    full = tf.constant(targets.astype(np.float32))
    small = augment.pool_to_map(targets, 4)  # shares in 32 x 32 blocks of 4 px
    shift = tf.constant([[1, 0, -8, 0, 1, 12, 0, 0]] * len(targets), tf.float32)  # 8 and -12 px: whole blocks
    angle, zoom = 0.1, 1.1
    cos, sin = zoom * np.cos(angle), zoom * np.sin(angle)
    centre = 63.5
    turn = tf.constant(
        [[cos, -sin, centre - cos * centre + sin * centre + 3.0, sin, cos, centre - sin * centre - cos * centre - 5.0, 0, 0]]
        * len(targets), tf.float32,
    )  # fmt: skip
    # whole-block shifts: the same cells exactly; a turn and a zoom: one resampling's blur at the lungs'
    # edges (measured 0.041 at most, 0.0023 on average; without the half-pixel term: 0.055 / 0.0030)
    for matrix, most, mean in ((shift, 1e-5, 1e-6), (turn, 0.05, 0.0028)):
        at_full = keras.ops.image.affine_transform(full, matrix, interpolation="bilinear", fill_mode="nearest")
        at_small = keras.ops.image.affine_transform(
            small, augment._at_scale(matrix, 4), interpolation="bilinear", fill_mode="nearest"
        )
        expected = augment.pool_to_map(at_full, 16).numpy()
        got = augment.pool_to_map(at_small, 4, already_shares=True).numpy()
        difference = np.abs(got - expected)
        assert difference.max() <= most and difference.mean() <= mean, (difference.max(), difference.mean())
        assert expected.max() > 0.9 and 0.1 < expected.mean() < 0.5  # the lungs are still in the picture


def test_at_scale_warps_a_pooled_ramp_as_the_full_size_warp_pooled():
    """Bilinear interpolation and block means are exact on a linear ramp: so must the small warp be."""
    side = 128
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    ramp = tf.constant((0.3 * xx + 0.7 * yy)[None, :, :, None])
    angle, zoom = 0.07, 0.95
    cos, sin = zoom * np.cos(angle), zoom * np.sin(angle)
    matrix = tf.constant([[cos, -sin, 9.0, sin, cos, -4.0, 0, 0]], tf.float32)
    at_full = augment.pool_to_map(keras.ops.image.affine_transform(ramp, matrix, interpolation="bilinear"), 4, already_shares=True)
    small = augment.pool_to_map(ramp, 4, already_shares=True)
    at_small = keras.ops.image.affine_transform(small, augment._at_scale(matrix, 4), interpolation="bilinear")
    inner = (0, slice(8, 24), slice(8, 24), 0)  # away from the fill at the edges
    np.testing.assert_allclose(at_small.numpy()[inner], at_full.numpy()[inner], atol=1e-3)


def test_training_batches_keep_the_targets_under_their_film_through_warp_and_flip():
    """The film and its targets are one square: after the dataset's warp and flip they must still coincide."""
    count, side = 16, 128
    rng = np.random.default_rng(2)
    films = np.zeros((count, side, side, 1), np.uint8)
    for film in films:
        top, left = rng.integers(16, 64, 2)
        film[top : top + 48, left : left + 32] = 255  # off-centre, not symmetric: a flip shows
    targets = np.concatenate([films, films], axis=-1)
    settings = {**load_params()["train"], "batch_size": count}
    # markers off: they are printed on the film only, on purpose (the next test), and would show as a mismatch
    settings["augment"] = {**AUGMENT, "contrast": 0.0, "brightness": 0.0, "flip": True, "translation": 0.15,
                           "markers": 0.0}  # fmt: skip
    data = augment.training_dataset(films, np.ones(count), np.ones(count), settings, seed=4, targets=targets, map_side=8)
    x, outputs, _ = next(iter(data))
    maps = outputs["evidence"].numpy()
    film_maps = augment.pool_to_map(tf.clip_by_value(x, 0.0, 255.0), 16).numpy()
    unwarped = augment.pool_to_map(films, 16).numpy()
    assert maps.shape == (count, 8, 8, 2)
    assert np.abs(maps[..., :1] - film_maps).max() < 0.12  # the same square, to one resampling's blur
    assert np.abs(maps[..., :1] - unwarped).max() > 0.5  # and it did move


def test_burnt_in_markers_are_printed_on_a_share_of_films_and_nothing_else_changes():
    """With every other augmentation off: at share 1 every film carries one marker (bright or dark, its
    strokes partly grey as a resized film's are), at share 0 none does; labels, weights and the evidence
    targets pass through untouched."""
    bank = augment.marker_bank(128, seed=5)
    coverage = bank[..., 0].astype(np.float32) / 255.0
    assert bank.shape == (augment.MARKER_BANK_SIZE, 128, 128, 1)
    assert (coverage.reshape(len(bank), -1).max(axis=1) > 0.5).all()  # every map draws a visible marker
    assert ((coverage > 0.05) & (coverage < 0.95)).any()  # anti-aliased, area-reduced strokes
    shares = (coverage > 0.5).reshape(len(bank), -1).mean(axis=1)
    assert 0.001 < np.median(shares) < 0.05  # a word on the film, not a blanket over it
    np.testing.assert_array_equal(augment.marker_bank(128, seed=5), bank)  # reproducible per seed

    still = {key: 0.0 for key in ("rotation", "zoom_in", "zoom_out", "translation", "contrast", "brightness")}
    train = load_params()["train"]
    flat = np.full((32, 128, 128, 1), 120, np.uint8)
    targets = np.zeros((32, 128, 128, 2), np.uint8)
    targets[:, 40:90, 20:60] = 255
    outputs = {}
    for share in (0.0, 1.0):
        settings = {**train, "batch_size": 32, "augment": {**train["augment"], **still, "markers": share}}
        dataset = augment.training_dataset(flat, np.ones(32), np.full(32, 2.0), settings, 3, targets, map_side=8)
        x, y, w = next(iter(dataset))
        outputs[share] = (x.numpy(), y, w)
    np.testing.assert_allclose(outputs[0.0][0], 120.0, atol=1e-3)
    marked = outputs[1.0][0]
    changed = np.abs(marked - 120.0).reshape(32, -1).max(axis=1)
    assert (changed > 40).all()  # every film
    assert (marked.reshape(32, -1).max(axis=1) > 190).sum() >= 16  # most markers are bright...
    assert (marked.reshape(32, -1).min(axis=1) < 60).sum() >= 1  # ...some dark
    for share in (0.0, 1.0):
        _, y, w = outputs[share]
        np.testing.assert_array_equal(y["tb_probability"].numpy(), 1.0)
        np.testing.assert_array_equal(w["tb_probability"].numpy(), 2.0)
        np.testing.assert_allclose(y["evidence"].numpy(), outputs[0.0][1]["evidence"].numpy())
    from cxr_core.settings import with_recipe

    assert with_recipe(load_params()["train"], "cam-evidence-markers")["augment"]["markers"] == 0.5
    assert load_params()["train"]["augment"]["markers"] == 0.5  # the shipped recipe's
    assert with_recipe(load_params()["train"], "cam-evidence")["augment"]["markers"] == 0.0


def test_only_the_recipes_measured_with_markers_print_them():
    """Every other recipe was measured before the markers existed: it must still train as documented
    now that the shipped default prints them."""
    from cxr_core.settings import RECIPES, RECIPES_WITH_MARKERS, with_recipe

    train = load_params()["train"]
    printed = {name for name in RECIPES if with_recipe(train, name)["augment"]["markers"] > 0}
    assert printed == set(RECIPES_WITH_MARKERS)
    assert len(RECIPES) - len(printed) >= 7  # reference, lungbox-reference, cam, cam-evidence, ... pin 0


def test_the_held_out_markers_of_evaluation_are_words_and_fonts_training_never_draws():
    """The strips test's six words are among the training's (it measures markers like those trained on);
    the held-out variant must share no word and no font with training, or the gate's second check would
    measure the training augmentation again."""
    from cxr_core.pipeline.evaluate import HELD_OUT_FONTS, HELD_OUT_MARKERS, MARKERS

    assert set(MARKERS) <= set(augment.MARKER_TEXTS)
    assert not set(HELD_OUT_MARKERS) & set(augment.MARKER_TEXTS)
    trained = {font for fonts in augment.MARKER_FONTS.values() for font in fonts}
    assert augment.MARKER_FONT in trained and not trained & set(HELD_OUT_FONTS) and len(HELD_OUT_FONTS) >= 3
    varied = augment.marker_bank(64, seed=1, count=64, fonts="varied")
    assert not np.array_equal(varied, augment.marker_bank(64, seed=1, count=64))  # other fonts, other strokes


def test_the_consistency_view_is_the_same_film_with_another_marker_and_nothing_else():
    """With train.augment.marker_consistency the dataset gives each film twice: as trained before (a
    marker on a share of films) and with a marker always, drawn apart; resolution loss, sharpness,
    exposure and noise are drawn once for both, so the only difference a consistency loss can see is a
    marker. Several small batches over two epochs: tf.data maps them in parallel, which is where draws
    made twice with the same op seeds stopped pairing up."""
    train = load_params()["train"]
    films = _films(64).astype(np.uint8)
    targets = np.zeros((64, 128, 128, 2), np.uint8)
    targets[:, 40:90, 20:60] = 255
    every_draw = {"gamma": 0.3, "noise": 4.0, "lowres_p": 0.5, "sharpness": 1.0, "markers": 0.5, "marker_consistency": 1.0}
    settings = {**train, "batch_size": 8, "augment": {**train["augment"], **every_draw}}
    names = ("tb_probability", "evidence", "marker_consistency")
    dataset = augment.training_dataset(films, np.ones(64), np.full(64, 2.0), settings, 3, targets, 8, names)
    shares = []
    for _ in range(2):
        for x, y, w in dataset:
            first, other = x["film"].numpy(), x["other_view"].numpy()
            differs = (np.abs(first - other) > 0.5).reshape(len(first), -1)
            assert differs.any(axis=1).all()  # every film's second view carries a marker
            shares.extend(differs.mean(axis=1))
            np.testing.assert_array_equal(y["marker_consistency"].numpy(), 0.0)
            np.testing.assert_array_equal(w["marker_consistency"].numpy(), 1.0)
            np.testing.assert_array_equal(w["tb_probability"].numpy(), 2.0)
    assert len(shares) == 128
    assert max(shares) < 0.25 and np.median(shares) < 0.06, (np.median(shares), max(shares))  # a marker, not a film

    no_markers = {**settings, "augment": {**settings["augment"], "markers": 0.0}}
    with pytest.raises(ValueError, match="needs train.augment.markers > 0"):
        augment.training_dataset(films, np.ones(64), np.ones(64), no_markers, 3, targets, 8, names)
    with pytest.raises(ValueError, match="evidence targets"):
        augment.training_dataset(films, np.ones(64), np.ones(64), settings, 3)
