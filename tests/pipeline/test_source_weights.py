"""Loss weights by class and by source, and what a single-class source teaches a real network."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_core import settings
from cxr_core.pipeline.train import sample_weights, single_class_sources, validation_weights

# "both" supplies TB and normals; "tb_only" and "normal_only" one class each (like TBX11K and Open-i)
TRAIN_LABELS = np.array([1] * 10 + [0] * 10 + [1] * 30 + [0] * 20)
SOURCES = ["both"] * 20 + ["tb_only"] * 30 + ["normal_only"] * 20


def test_single_class_sources_are_named_from_the_films():
    assert single_class_sources(TRAIN_LABELS, SOURCES) == ["normal_only", "tb_only"]


def test_a_single_class_source_can_be_taken_out_of_the_loss_and_each_class_keeps_its_weight():
    plain = sample_weights(TRAIN_LABELS, SOURCES, max_source_weight=20.0)
    same = sample_weights(TRAIN_LABELS, SOURCES, max_source_weight=20.0, single_class_source_weight=1.0)
    np.testing.assert_array_equal(plain, same)
    paired = sample_weights(TRAIN_LABELS, SOURCES, max_source_weight=20.0, single_class_source_weight=0.0)
    single = np.isin(SOURCES, ["tb_only", "normal_only"])
    assert np.all(paired[single] == 0) and np.all(paired[~single] > 0)
    for label in (0, 1):
        in_class = np.equal(TRAIN_LABELS, label)
        assert paired[in_class].sum() == pytest.approx(plain[in_class].sum())
    half = sample_weights(TRAIN_LABELS, SOURCES, max_source_weight=20.0, single_class_source_weight=0.5)
    tb = TRAIN_LABELS == 1
    ratio = half[tb & single].mean() / half[tb & ~single].mean()
    assert ratio == pytest.approx(0.5 * plain[tb & single].mean() / plain[tb & ~single].mean())


def test_a_class_taught_only_by_single_class_sources_is_refused_with_a_reason():
    labels = np.array([1] * 10 + [0] * 10)
    with pytest.raises(ValueError, match="single_class_source_weight"):
        sample_weights(labels, ["tb_only"] * 10 + ["both"] * 10, 20.0, single_class_source_weight=0.0)


def test_a_stray_film_of_the_other_class_does_not_make_a_source_two_class():
    """TBX11K has one normal among 641 TB films: it is a single-class source, the stray film included."""
    labels = np.array([1] * 40 + [0] * 1 + [1] * 20 + [0] * 20)
    sources = ["tbx"] * 41 + ["both"] * 40
    assert single_class_sources(labels, sources) == ["tbx"]
    weights = sample_weights(labels, sources, 20.0, single_class_source_weight=0.0)
    assert np.all(weights[:41] == 0) and np.all(weights[41:] > 0)


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_a_weight_that_is_not_a_number_at_least_zero_is_refused(weight):
    with pytest.raises(ValueError, match=">= 0"):
        sample_weights(TRAIN_LABELS, SOURCES, 20.0, single_class_source_weight=weight)


def test_validation_films_follow_the_training_splits_sources():
    weights = validation_weights(["both", "tb_only", "elsewhere"], ["tb_only", "normal_only"], 0.0)
    np.testing.assert_array_equal(weights, [1.0, 0.0, 1.0])


def _films(rng, n: int, source: str, label: int, marker: bool | None):
    """64 px films: TB is a faint blob in the middle; ``marker`` a black corner (None: on half)."""
    images = rng.normal(100, 25, (n, 64, 64)).clip(0, 255)
    for i in range(n):
        if label:
            y, x = rng.integers(22, 42, 2)
            images[i, y - 4 : y + 4, x - 4 : x + 4] += 25
        if marker or (marker is None and rng.random() < 0.5):
            images[i, 0:12, 0:12] = 0
    return images.astype(np.uint8)[..., None], np.full(n, label, np.int32), [source] * n


def _stack(*parts):
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        [s for p in parts for s in p[2]],
    )


@pytest.mark.slow
def test_without_single_class_sources_in_the_loss_the_network_learns_the_sign_not_the_source():
    """A TB-only source with a corner marker and a normals-only source without it: trained on them, the
    network reads the marker; with their weight at 0 it learns the blob the two-class source shows. Judged
    on new films where the marker says the opposite of the label."""
    from cxr_core.pipeline.train import fit_network

    rng = np.random.default_rng(0)
    train = _stack(
        _films(rng, 24, "both", 1, None), _films(rng, 24, "both", 0, None),
        _films(rng, 96, "tb_only", 1, True), _films(rng, 96, "normal_only", 0, False),
    )  # fmt: skip
    val = _stack(
        _films(rng, 16, "both", 1, None), _films(rng, 16, "both", 0, None),
        _films(rng, 32, "tb_only", 1, True), _films(rng, 32, "normal_only", 0, False),
    )  # fmt: skip
    test = _stack(_films(rng, 40, "new", 1, False), _films(rng, 40, "new", 0, True))
    params = settings.with_recipe({}, "cam")
    params.update(epochs=15, patience=50, seed=0, batch_size=32, learning_rate=0.003)
    params["model"]["filters"] = [8, 16, 16]
    params["augment"].update(rotation=0.0, zoom_in=0.0, zoom_out=0.0, translation=0.0, contrast=0.0, brightness=0.0)
    auc = {}
    for weight in (1.0, 0.0):
        params["single_class_source_weight"] = weight
        model, _ = fit_network(*train, val[0], val[1], params, sources_val=val[2])
        auc[weight] = roc_auc_score(test[1], model.predict(test[0], verbose=0).ravel())
    # Early stopping follows only 32 validation films here, so the restored epoch is noisy: over seeds
    # 0-4 the blob network scored 0.79-0.94 (review, 2026-12-03). The gap to the marker network (>= 0.36
    # on every seed) carries the claim; the floor only says the blob was learnt at all.
    assert auc[0.0] >= 0.7, auc  # the blob
    assert auc[1.0] < auc[0.0] - 0.2, auc  # pulled towards the marker's answer


@pytest.mark.slow
def test_early_stopping_follows_the_auc_of_the_weighted_validation_films():
    """Keras applies sample weights only to weighted metrics: the validation AUC in the history must be
    the AUC of the films that count. Here the single-class sources' validation films are labelled against
    the blob, so counting them would pull the AUC down."""
    import keras

    from cxr_core.pipeline.train import fit_network

    rng = np.random.default_rng(1)
    train = _stack(
        _films(rng, 48, "both", 1, None), _films(rng, 48, "both", 0, None),
        _films(rng, 48, "tb_only", 1, None), _films(rng, 48, "normal_only", 0, None),
    )  # fmt: skip
    counted = _stack(_films(rng, 24, "both", 1, None), _films(rng, 24, "both", 0, None))
    against = _films(rng, 24, "tb_only", 0, None)[0], np.ones(24, np.int32), ["tb_only"] * 24
    blob = _films(rng, 24, "normal_only", 1, None)[0], np.zeros(24, np.int32), ["normal_only"] * 24
    val = _stack(counted, against, blob)
    params = settings.with_recipe({}, "cam")
    # Four epochs, not one: after one epoch of 7 steps the scores spanned 0.008, two of Keras AUC's 200
    # bins, and the gap between the two AUCs hung on the thread count (review, 2026-12-03).
    params.update(epochs=4, patience=4, seed=0, batch_size=32, learning_rate=0.003, single_class_source_weight=0.0)
    params["model"]["filters"] = [8, 16, 16]
    params["augment"].update(rotation=0.0, zoom_in=0.0, zoom_out=0.0, translation=0.0, contrast=0.0, brightness=0.0)
    model, history = fit_network(*train, val[0], val[1], params, sources_val=val[2])
    scores = model.predict(val[0], verbose=0).ravel()
    weights = (np.asarray(val[2]) == "both").astype(np.float32)
    weighted, unweighted = keras.metrics.AUC(), keras.metrics.AUC()
    weighted.update_state(val[1], scores, sample_weight=weights)
    unweighted.update_state(val[1], scores)
    assert float(weighted.result()) > float(unweighted.result()) + 0.05  # the films against the blob count
    # the model returned is the best epoch's (restore_best_weights): its AUC is the history's best
    assert max(history.history["val_auc"]) == pytest.approx(float(weighted.result()), abs=1e-3)


def test_validation_left_with_one_class_is_refused_before_training():
    """Early stopping would follow an AUC of 0 every epoch and silently keep the first epoch."""
    from cxr_core.pipeline.train import fit_network

    rng = np.random.default_rng(2)
    train = _stack(
        _films(rng, 12, "both", 1, None), _films(rng, 12, "both", 0, None), _films(rng, 12, "tb_only", 1, None)
    )
    val = _stack(_films(rng, 4, "both", 0, None), _films(rng, 4, "tb_only", 1, None))
    params = settings.with_recipe({}, "cam")
    params.update(epochs=1, single_class_source_weight=0.0)
    with pytest.raises(ValueError, match="one class only"):
        fit_network(*train, val[0], val[1], params, sources_val=val[2])
