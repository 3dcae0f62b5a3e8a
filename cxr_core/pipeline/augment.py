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
- at another sharpness: blurred or edge-enhanced by an unsharp mask of random amount. Detectors and
  their vendors' processing differ most in exactly this, and a network trained without it read
  sharpness as disease: an unsharp mask raised the shipped CAM network's probability by a median 0.29
  on normal and TB films alike, and a film upscaled to 3,000 px scored higher than itself;
- with a burnt-in text marker (L, R, PORTABLE, a date...), bright or dark, anywhere on the view: a
  marker over an apex moved more test decisions than the strip of padding the product's strips test
  adds beside the film (the strip barely moves the lung box);

and optionally mixed with another film (MixUp) or with softened labels (label smoothing). Everything
runs inside one ``tf.data`` map on float32 0..255 batches; the network rescales to 0..1 itself.
"""

import keras
import numpy as np
import tensorflow as tf


def _geometric_and_exposure(augment: dict, seed: int):
    """Flip, rotation, zoom and translation as ONE warp, then contrast and brightness.

    The random parameters are drawn by the same Keras layers, with the same seeds, as a chain of
    ``RandomRotation -> RandomZoom -> RandomTranslation`` would draw them (each layer's
    ``get_random_transformation``), so every image gets the same angle, zoom and shift from the same
    distributions. What changes is that their three matrices are composed and the image is resampled
    once (one bilinear interpolation instead of three): a third of the warping work, and less blur.
    Beyond the film's edge the ``nearest`` fill now repeats the film's own edge rather than the
    previous warp's, which differs only where the warps move the frame inwards.
    """
    fill = augment["fill_mode"]
    rotation = keras.layers.RandomRotation(augment["rotation"], fill_mode=fill, fill_value=0.0, seed=seed)
    zoom = keras.layers.RandomZoom(
        (-augment["zoom_in"], augment["zoom_out"]), fill_mode=fill, fill_value=0.0, seed=seed + 1
    )
    translation = keras.layers.RandomTranslation(
        augment["translation"], augment["translation"], fill_mode=fill, fill_value=0.0, seed=seed + 2
    )
    contrast = keras.layers.RandomContrast(augment["contrast"], value_range=(0, 255), seed=seed + 3)
    brightness = keras.layers.RandomBrightness(augment["brightness"], value_range=(0, 255), seed=seed + 4)
    flip = keras.layers.RandomFlip("horizontal", seed=seed + 5) if augment["flip"] else None

    def apply(images: tf.Tensor, targets: tf.Tensor | None = None, scale: int = 1):
        """The warped, exposed film; and ``targets``, warped only, if given.

        ``targets`` may be the films' evidence targets at 1/``scale`` of their side (already block
        means): they get the same warp, in their own pixels. They are only ever pooled to the
        network's coarse map, so warping them small gives the same cells but for the blur of one
        resampling, at a fraction of the work (two channels of 128 px were two thirds of the input
        pipeline's CPU on a fast CPU, docs/performance.md).
        """
        x = images
        if flip is not None:  # one draw for film and targets, so the lungs stay under the lungs
            flipped = flip.get_random_transformation(images, training=True)
            x = flip.transform_images(images, flipped, training=True)
            if targets is not None:
                targets = flip.transform_images(targets, flipped, training=True)
        matrix = _compose(
            rotation.get_random_transformation(x, training=True)["rotation_matrix"],
            _zoom_matrix(zoom.get_random_transformation(x, training=True), tf.shape(x)),
            _translation_matrix(translation.get_random_transformation(x, training=True)["translations"]),
        )
        film = keras.ops.image.affine_transform(x, matrix, interpolation="bilinear", fill_mode=fill, fill_value=0.0)
        film = brightness(contrast(film, training=True), training=True)
        if targets is None:
            return film, None
        warped = keras.ops.image.affine_transform(
            targets, _at_scale(matrix, scale), interpolation="bilinear", fill_mode=fill, fill_value=0.0
        )
        return film, warped

    return apply


def _zoom_matrix(drawn: dict, shape) -> tf.Tensor:
    """RandomZoom's output-to-input matrix (8 numbers per image) for the zooms it drew."""
    zx = tf.cast(drawn["width_zoom"], tf.float32)[:, 0]
    zy = tf.cast(drawn["height_zoom"], tf.float32)[:, 0]
    width, height = tf.cast(shape[2], tf.float32), tf.cast(shape[1], tf.float32)
    zero = tf.zeros_like(zx)
    x_offset = (width - 1.0) / 2.0 * (1.0 - zx)
    y_offset = (height - 1.0) / 2.0 * (1.0 - zy)
    return tf.stack([zx, zero, x_offset, zero, zy, y_offset, zero, zero], axis=1)


def _translation_matrix(translations: tf.Tensor) -> tf.Tensor:
    """RandomTranslation's output-to-input matrix for the shifts (pixels, x then y) it drew."""
    dx, dy = translations[:, 0], translations[:, 1]
    one, zero = tf.ones_like(dx), tf.zeros_like(dx)
    return tf.stack([one, zero, -dx, zero, one, -dy, zero, zero], axis=1)


def _at_scale(matrix: tf.Tensor, scale: int) -> tf.Tensor:
    """An affine output-to-input matrix in the pixels of an image ``scale`` times smaller.

    Pixel ``u`` of the small image is the centre of the block ``scale * u + (scale - 1) / 2`` of the
    large one: the linear part is kept and the shift moved to the small image's pixels. Affine only
    (the last two numbers zero), as rotation, zoom and translation compose.
    """
    half = (scale - 1) / 2.0  # at scale 1: the matrix as it is
    a0, a1, a2, b0, b1, b2, c0, c1 = tf.unstack(matrix, axis=1)
    a2 = (a2 + half * (a0 + a1 - 1.0)) / scale
    b2 = (b2 + half * (b0 + b1 - 1.0)) / scale
    return tf.stack([a0, a1, a2, b0, b1, b2, c0, c1], axis=1)


def _compose(*transforms: tf.Tensor) -> tf.Tensor:
    """One output-to-input matrix equal to applying the given warps in order, first one first.

    Warp A then B shows, at output point p, the input at ``A(B(p))``: the 3x3 matrices multiply in
    the order the warps were applied.
    """

    def square(t):
        t = tf.cast(t, tf.float32)
        return tf.reshape(tf.concat([t, tf.ones_like(t[:, :1])], axis=1), [-1, 3, 3])

    matrix = square(transforms[0])
    for transform in transforms[1:]:
        matrix = tf.matmul(matrix, square(transform))
    matrix = matrix / matrix[:, 2:3, 2:3]
    return tf.reshape(matrix, [-1, 9])[:, :8]


def pool_to_map(targets, factor: int, already_shares: bool = False) -> tf.Tensor:
    """0/255 evidence targets (n, side, side, k) as each map cell's share, ``factor`` pixels a cell.

    The one pooling of targets to the network's map: training batches, validation, and the benchmark.
    Each cell is the mean of its ``factor`` x ``factor`` block, taken as a reshape and a mean over two
    axes: what ``avg_pool2d(..., "VALID")`` computes (trailing rows and columns that fill no cell are
    dropped), at about a third of its CPU on a training batch (on a 2-core EPYC, 0.44 against 1.19 ms
    a film of 128 px with two target channels), where that pooling was a third of the input
    pipeline's cost. ``already_shares``: the targets are block means in 0..1 already (the training
    input pools them to a quarter of the side before it warps them), so only the mean is taken.
    """
    shares = tf.cast(targets, tf.float32)
    if not already_shares:
        shares = shares / 255.0
    dynamic = tf.shape(shares)
    count, height, width, channels = (
        static if static is not None else dynamic[axis] for axis, static in enumerate(shares.shape)
    )
    rows, cols = height // factor, width // factor
    blocks = tf.reshape(shares[:, : rows * factor, : cols * factor], [count, rows, factor, cols, factor, channels])
    return tf.reduce_mean(blocks, axis=[2, 4])


SHARPNESS_SIGMA = 1.0  # px of the model input: the scale of a detector's edge enhancement at 128 px


def _gaussian_blur(images: tf.Tensor, sigma: float) -> tf.Tensor:
    """Separable Gaussian blur of (n, h, w, 1) images, edges reflected (no dark rim from zero padding)."""
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = tf.constant(taps / taps.sum(), tf.float32)
    padded = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    rows = tf.nn.conv2d(padded, tf.reshape(taps, [-1, 1, 1, 1]), strides=1, padding="VALID")
    return tf.nn.conv2d(rows, tf.reshape(taps, [1, -1, 1, 1]), strides=1, padding="VALID")


def _tiled(draw: tf.Tensor, views: int) -> tf.Tensor:
    """Per-film draws repeated for each view of a batch that holds ``views`` views of the same films one
    after another: every view of a film then gets the same exposure, sharpness and noise."""
    return draw if views == 1 else tf.tile(draw, [views] + [1] * (len(draw.shape) - 1))


def _sharpness(images: tf.Tensor, amount: float, seed: int, views: int = 1) -> tf.Tensor:
    """Unsharp mask ``x + a * (x - blur(x))`` with ``a`` drawn per image from U(-min(1, amount), amount).

    Below zero it blurs (-1 is the Gaussian blur itself), above it enhances edges as a detector's
    processing does; the training films then span both, so sharpness stops telling TB from normal.
    """
    count = tf.shape(images)[0] // views
    drawn = _tiled(tf.random.uniform([count, 1, 1, 1], -min(1.0, amount), amount, seed=seed + 36), views)
    return images + drawn * (images - _gaussian_blur(images, SHARPNESS_SIGMA))


def _resolution_gamma_noise(images: tf.Tensor, augment: dict, seed: int, views: int = 1) -> tf.Tensor:
    """Per-image resolution loss (probability ``lowres_p``), sharpness, gamma and Gaussian noise.

    ``views``: the batch holds that many views of the same films one after another, and each film's
    draws are shared by its views. Drawn once and repeated, not drawn again with the same op seeds: a
    seeded op's sequence advances per call, and tf.data maps batches in parallel, so two calls do not
    pair up (a review measured whole batches whose two views differed everywhere).
    """
    count = tf.shape(images)[0] // views
    side = tf.shape(images)[1]
    x = images
    if augment["lowres_p"] > 0:
        low = tf.random.uniform(
            [], augment["lowres_min"], augment["lowres_max"] + 1, dtype=tf.int32, seed=seed + 31
        )
        small = tf.image.resize(x, tf.stack([low, low]), method="area")
        back = tf.image.resize(small, tf.stack([side, side]), method="bilinear")
        pick = tf.cast(tf.random.uniform([count, 1, 1, 1], seed=seed + 32) < augment["lowres_p"], tf.float32)
        x = _tiled(pick, views) * back + (1.0 - _tiled(pick, views)) * x
    if augment.get("sharpness", 0.0) > 0:
        x = tf.clip_by_value(_sharpness(x, float(augment["sharpness"]), seed, views), 0.0, 255.0)
    if augment["gamma"] > 0:
        gamma = tf.exp(
            tf.random.uniform([count, 1, 1, 1], -augment["gamma"], augment["gamma"], seed=seed + 33)
        )
        x = 255.0 * tf.pow(tf.clip_by_value(x / 255.0, 1e-6, 1.0), _tiled(gamma, views))
    if augment["noise"] > 0:
        sigma = tf.random.uniform([count, 1, 1, 1], 0.0, augment["noise"], seed=seed + 34)
        film_shape = tf.concat([[count], tf.shape(x)[1:]], axis=0)
        x = x + _tiled(sigma * tf.random.normal(film_shape, seed=seed + 35), views)
    return tf.clip_by_value(x, 0.0, 255.0)


# Burnt-in annotations as hospitals print them; the product's strips test draws a few of them (L, R, PA,
# AP, ERECT, PORTABLE) at a size of its own, so training draws more words, sizes and places than it does.
MARKER_TEXTS = ("L", "R", "PA", "AP", "LAT", "ERECT", "SUPINE", "PORTABLE", "SITTING", "INSP", "12/05",
                "2026", "ID 4471", "MOBILE", "WARD 3")  # fmt: skip
MARKER_FONT = "FONT_HERSHEY_SIMPLEX"  # the shipped recipe's only one: evaluation's held-out markers use others
# train.augment.marker_fonts "varied": four fonts, upright or italic; still none of evaluation's held-out
# fonts (a test holds them apart), so that check keeps measuring markers unlike the training's.
MARKER_FONTS = {"simplex": (MARKER_FONT,),
                "varied": (MARKER_FONT, "FONT_HERSHEY_PLAIN", "FONT_HERSHEY_COMPLEX_SMALL", "FONT_HERSHEY_SCRIPT_COMPLEX")}  # fmt: skip
MARKER_BANK_SIZE = 512
MARKER_SUPERSAMPLE = 4


def marker_bank(side: int, seed: int, count: int = MARKER_BANK_SIZE, fonts: str = "simplex") -> np.ndarray:
    """``count`` coverage maps (count, side, side, 1) uint8 0..255 of one text marker each, at random
    words, sizes and places (partly outside the view included), in the fonts ``MARKER_FONTS[fonts]``.

    Drawn at four times the side and area-reduced, as a film's marker reaches the network's input
    after the lung crop is resized: strokes thinner than a pixel arrive as faint grey, not as solid lines.
    """
    import cv2

    rng = np.random.default_rng(seed)
    choices = MARKER_FONTS[fonts]
    big = side * MARKER_SUPERSAMPLE
    bank = np.zeros((count, side, side, 1), np.uint8)
    for index in range(count):
        canvas = np.zeros((big, big), np.uint8)
        # the strips test draws at film height / 400 and the lung box is ~70 % of the film: wider than that
        scale = big / 400.0 * rng.uniform(0.6, 2.0)
        thickness = max(1, int(round(scale * rng.uniform(1.5, 3.0))))
        text = str(rng.choice(MARKER_TEXTS))
        font = getattr(cv2, MARKER_FONT)
        if len(choices) > 1:  # the single-font bank draws exactly what the shipped recipe drew
            font = getattr(cv2, str(rng.choice(choices))) | (cv2.FONT_ITALIC if rng.random() < 0.3 else 0)
            scale *= rng.uniform(0.8, 1.4)
        (width, height), _ = cv2.getTextSize(text, font, scale, thickness)
        x = int(rng.uniform(-0.2 * width, big - 0.8 * width))
        y = int(rng.uniform(0.8 * height, big + 0.2 * height))
        cv2.putText(canvas, text, (x, y), font, scale, 255, thickness, cv2.LINE_AA)
        bank[index, ..., 0] = cv2.resize(canvas, (side, side), interpolation=cv2.INTER_AREA)
    return bank


def _burn_markers(images: tf.Tensor, bank: tf.Tensor, share: float, seed: int) -> tf.Tensor:
    """A share of the films get one marker from ``bank``, bright (four in five) or dark."""
    count = tf.shape(images)[0]
    coverage = tf.cast(
        tf.gather(bank, tf.random.uniform([count], 0, tf.shape(bank)[0], dtype=tf.int32, seed=seed + 41)),
        tf.float32,
    ) / 255.0
    burnt = tf.cast(tf.random.uniform([count, 1, 1, 1], seed=seed + 42) < share, tf.float32)
    bright = tf.random.uniform([count, 1, 1, 1], 200.0, 255.0, seed=seed + 43)
    dark = tf.random.uniform([count, 1, 1, 1], 0.0, 40.0, seed=seed + 44)
    value = tf.where(tf.random.uniform([count, 1, 1, 1], seed=seed + 45) < 0.8, bright, dark)
    alpha = coverage * burnt
    return images * (1.0 - alpha) + value * alpha


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
    targets: np.ndarray | None = None,
    map_side: int | None = None,
    output_names: tuple[str, ...] = ("tb_probability", "evidence"),
) -> tf.data.Dataset:
    """Shuffled, augmented, prefetched ``(image, label, weight)`` batches for ``model.fit``.

    ``train`` is the ``train`` section of the settings (``augment``, ``batch_size``, ``mixup``,
    ``label_smoothing``). With ``targets`` ((n, side, side, k) uint8 0/255 evidence targets: grown lung
    fields, lesion boxes) they are warped with their film, so the lungs stay under the lungs (at a
    quarter of its side: they are only ever seen as the map's cells), then area-pooled to the
    network's ``map_side`` and given as a second output named ``output_names[1]``. With
    ``augment.marker_consistency`` the inputs are ``{"film", "other_view"}`` (the second with another
    marker, all else equal) and a third output ``output_names[2]`` of zeros: the logit gap to train away.
    """
    augment = train["augment"]
    augmenter = _geometric_and_exposure(augment, seed)
    marker_share = float(augment.get("markers", 0.0))
    fonts = augment.get("marker_fonts", "simplex")
    bank = tf.constant(marker_bank(int(images.shape[1]), seed, fonts=fonts)) if marker_share > 0 else None

    def with_markers(x):  # after the warp: a marker is printed on the film as it reaches the view
        return _burn_markers(x, bank, marker_share, seed) if bank is not None else x
    mixup = float(train["mixup"])
    smoothing = float(train["label_smoothing"])
    if targets is not None and mixup > 0:
        raise ValueError(
            "MixUp blends two films, so their evidence targets would disagree: use one or the other"
        )

    def apply(batch_images, batch_labels, batch_weights):
        film, _ = augmenter(tf.cast(batch_images, tf.float32))
        x = with_markers(tf.clip_by_value(film, 0.0, 255.0))
        x = _resolution_gamma_noise(x, augment, seed)
        y, w = batch_labels, batch_weights
        if mixup > 0:
            x, y, w = _mixup(x, y, w, mixup, seed)
        if smoothing > 0:
            y = y * (1.0 - smoothing) + 0.5 * smoothing
        return x, y, w

    consistent = float(augment.get("marker_consistency", 0.0)) > 0
    if consistent and bank is None:
        raise ValueError("train.augment.marker_consistency compares markers: it needs train.augment.markers > 0")
    if consistent and (targets is None or len(output_names) < 3):
        raise ValueError(
            "train.augment.marker_consistency trains through the evidence trainer: it needs the lung fields' "
            "evidence targets (an ingest with lung masks) and a CAM recipe with the evidence loss"
        )

    def apply_with_targets(batch_images, batch_targets, batch_labels, batch_weights):
        film, warped_targets = augmenter(tf.cast(batch_images, tf.float32), batch_targets, target_scale)
        film = tf.clip_by_value(film, 0.0, 255.0)
        t = pool_to_map(warped_targets, factor // target_scale, already_shares=True)
        y = batch_labels * (1.0 - smoothing) + 0.5 * smoothing if smoothing > 0 else batch_labels
        names = output_names
        outputs = {names[0]: y, names[1]: t}
        weights = {names[0]: batch_weights, names[1]: tf.ones_like(batch_weights)}
        if not consistent:
            return _resolution_gamma_noise(with_markers(film), augment, seed), outputs, weights
        # The same warped film with a marker always, drawn apart from the first view's (which has one on
        # a share of films only), through one call of the exposure and noise steps with the draws shared,
        # so that the marker is the only difference between the two views.
        count = tf.shape(film)[0]
        both = tf.concat([with_markers(film), _burn_markers(film, bank, 1.0, seed + 100)], axis=0)
        both = _resolution_gamma_noise(both, augment, seed, views=2)
        outputs[names[2]] = tf.zeros_like(batch_labels)
        weights[names[2]] = tf.ones_like(batch_weights)
        return {"film": both[:count], "other_view": both[count:]}, outputs, weights

    factor = int(images.shape[1]) // int(map_side or 1)
    if targets is None:
        data = (images, labels.astype(np.float32), weights.astype(np.float32))
        mapper = apply
    else:
        # the targets are warped at a quarter of the film's side (or the largest divisor of the map's
        # cell below it), as block means: the map's cells come out the same but for one resampling's
        # blur; pooled in slices, to hold only 256 films as float32 at full size at a time
        target_scale = max(d for d in (4, 2, 1) if factor % d == 0)
        targets = np.concatenate(
            [pool_to_map(targets[start : start + 256], target_scale).numpy() for start in range(0, len(targets), 256)]
        )
        data = (images, targets, labels.astype(np.float32), weights.astype(np.float32))
        mapper = apply_with_targets
    return (
        tf.data.Dataset.from_tensor_slices(data)
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .batch(int(train["batch_size"]))
        .map(mapper, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
