"""Training-time augmentation that makes the hospital a poor cue: framing, exposure, resolution, noise.

Each source of the development data has its own look: tight crops or wide fields of view, black bars,
exposure and contrast, 256-px re-encodes or 1024-px JPEGs, scanner noise. A network that can tell the
source can pass for a TB detector on a pooled split and fail at a new hospital. So every training film
is shown, at random,

- framed differently: rotation, translation, zoom in to ~60 % of the film (a tight crop) or out with
  black fill (a padded film), optionally mirrored;
- exposed differently: contrast, brightness and gamma;
- at another resolution: area-downscaled to 40-96 px and brought back (a 256-px source then looks
  like any other), with sensor-like Gaussian noise;

and optionally mixed with another film (MixUp) or with softened labels (label smoothing). Everything
runs inside one ``tf.data`` map on float32 0..255 batches; the network rescales to 0..1 itself.
"""

import keras
import numpy as np
import tensorflow as tf


def _geometric_and_exposure(augment: dict, seed: int) -> keras.Sequential:
    fill = augment["fill_mode"]
    steps = [
        keras.layers.RandomRotation(augment["rotation"], fill_mode=fill, fill_value=0.0, seed=seed),
        keras.layers.RandomZoom(
            (-augment["zoom_in"], augment["zoom_out"]), fill_mode=fill, fill_value=0.0, seed=seed + 1
        ),
        keras.layers.RandomTranslation(
            augment["translation"], augment["translation"], fill_mode=fill, fill_value=0.0, seed=seed + 2
        ),
        keras.layers.RandomContrast(augment["contrast"], value_range=(0, 255), seed=seed + 3),
        keras.layers.RandomBrightness(augment["brightness"], value_range=(0, 255), seed=seed + 4),
    ]
    if augment["flip"]:
        steps.insert(0, keras.layers.RandomFlip("horizontal", seed=seed + 5))
    return keras.Sequential(steps, name="augment")


def _resolution_gamma_noise(images: tf.Tensor, augment: dict, seed: int) -> tf.Tensor:
    """Per-image resolution loss (probability ``lowres_p``), gamma and Gaussian noise."""
    count = tf.shape(images)[0]
    side = tf.shape(images)[1]
    x = images
    if augment["lowres_p"] > 0:
        low = tf.random.uniform(
            [], augment["lowres_min"], augment["lowres_max"] + 1, dtype=tf.int32, seed=seed + 31
        )
        small = tf.image.resize(x, tf.stack([low, low]), method="area")
        back = tf.image.resize(small, tf.stack([side, side]), method="bilinear")
        pick = tf.cast(tf.random.uniform([count, 1, 1, 1], seed=seed + 32) < augment["lowres_p"], tf.float32)
        x = pick * back + (1.0 - pick) * x
    if augment["gamma"] > 0:
        gamma = tf.exp(
            tf.random.uniform([count, 1, 1, 1], -augment["gamma"], augment["gamma"], seed=seed + 33)
        )
        x = 255.0 * tf.pow(tf.clip_by_value(x / 255.0, 1e-6, 1.0), gamma)
    if augment["noise"] > 0:
        sigma = tf.random.uniform([count, 1, 1, 1], 0.0, augment["noise"], seed=seed + 34)
        x = x + sigma * tf.random.normal(tf.shape(x), seed=seed + 35)
    return tf.clip_by_value(x, 0.0, 255.0)


def _mixup(x, y, w, alpha: float, seed: int):
    """MixUp with Beta(alpha, alpha) weights (drawn as a ratio of two Gamma variables)."""
    count = tf.shape(x)[0]
    a = tf.random.gamma([count], alpha, seed=seed + 21)
    b = tf.random.gamma([count], alpha, seed=seed + 22)
    lam = a / (a + b)
    partner = tf.random.shuffle(tf.range(count), seed=seed + 23)
    lam_image = tf.reshape(lam, [-1, 1, 1, 1])
    x = lam_image * x + (1.0 - lam_image) * tf.gather(x, partner)
    y = lam * y + (1.0 - lam) * tf.gather(y, partner)
    w = lam * w + (1.0 - lam) * tf.gather(w, partner)
    return x, y, w


def training_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    train: dict,
    seed: int,
) -> tf.data.Dataset:
    """Shuffled, augmented, prefetched ``(image, label, weight)`` batches for ``model.fit``.

    ``train`` is the ``train`` section of the settings (``augment``, ``batch_size``, ``mixup``,
    ``label_smoothing``).
    """
    augment = train["augment"]
    augmenter = _geometric_and_exposure(augment, seed)
    mixup = float(train["mixup"])
    smoothing = float(train["label_smoothing"])

    def apply(batch_images, batch_labels, batch_weights):
        x = tf.clip_by_value(augmenter(tf.cast(batch_images, tf.float32), training=True), 0.0, 255.0)
        x = _resolution_gamma_noise(x, augment, seed)
        y, w = batch_labels, batch_weights
        if mixup > 0:
            x, y, w = _mixup(x, y, w, mixup, seed)
        if smoothing > 0:
            y = y * (1.0 - smoothing) + 0.5 * smoothing
        return x, y, w

    return (
        tf.data.Dataset.from_tensor_slices((images, labels.astype(np.float32), weights.astype(np.float32)))
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .batch(int(train["batch_size"]))
        .map(apply, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
