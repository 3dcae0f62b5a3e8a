"""Grad-CAM for the screening CNN, computed in the same compiled pass as the probability.

Two Keras 3 traps shaped this module: ``model.output`` raises on a Sequential model, and a "grad model"
built from a loaded model's layer outputs can silently yield ``None`` gradients. So the layers are run
one by one inside the tape. The gradient is taken of the pre-sigmoid logit, not of the probability: on
a confident image the sigmoid saturates and its gradient (and so the heatmap) fades to noise.

One ``tf.function`` with a fixed input signature returns probability, heatmap and the penultimate
embedding (used for the out-of-distribution check), so a batch costs one traced call and never
retraces for a new batch size.

Heatmaps are on an absolute scale, in units of the film's TB probability: the map's shape (each film's
raw map over its own peak: *where* the evidence lies) times the probability (*how much* there is). The
brightest spot of a film scored 0.07 is 0.07, almost clear; only a film scored near 1 reaches full red.
Scaling each film by its own maximum painted a film scored 0.07 as red as one scored 0.95, and a fixed
divisor chosen at training (the previous design) did no better on the real model: the raw Grad-CAM
magnitude of the reference CNN does not follow its score (all 40 checked films below 0.1 reached full
red), so the magnitude is taken from the score itself.
"""

from dataclasses import dataclass

import cv2
import numpy as np

from cxr_core.imaging.display import DISPLAY_SIDE, display_gray, display_scale
from cxr_core.imaging.preprocess import CropBox
from cxr_core.modelling.networks import EMBEDDING, OUTPUT, features_end


@dataclass
class CamBatch:
    probabilities: np.ndarray  # (n,) float32
    heatmaps: np.ndarray  # (n, h, w) float32 in [0, probability], at the last convolution's resolution
    embeddings: np.ndarray  # (n, dense_units) float32
    raw: np.ndarray  # (n, h, w) float32 >= 0: the un-scaled map, for evidence shares


class GradCam:
    """Probability, Grad-CAM heatmap and embedding for a batch of preprocessed uint8 images."""

    def __init__(self, model):
        import tensorflow as tf

        chain = [layer for layer in model.layers if layer.__class__.__name__ != "InputLayer"]
        # The feature map is the activation after the last convolution's normalisation and ReLU.
        split = features_end([layer.__class__.__name__ for layer in chain])
        to_conv, after_conv = chain[:split], chain[split:]
        if not after_conv or after_conv[-1].name != OUTPUT:
            raise ValueError(f"model must end in the '{OUTPUT}' dense layer")
        head, output_layer = after_conv[:-1], after_conv[-1]
        side = int(model.input_shape[1])

        @tf.function(
            input_signature=[tf.TensorSpec([None, side, side, 1], tf.float32)],
            reduce_retracing=True,
        )
        def run(images):
            features = images
            for layer in to_conv:
                features = layer(features, training=False)
            with tf.GradientTape() as tape:
                tape.watch(features)
                hidden = features
                embedding = hidden
                for layer in head:
                    hidden = layer(hidden, training=False)
                    if layer.name == EMBEDDING:
                        embedding = hidden
                logit = tf.matmul(hidden, output_layer.kernel) + output_layer.bias
            grads = tape.gradient(logit, features)
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))
            return tf.sigmoid(logit)[:, 0], cam, embedding

        self._run = run
        self.side = side

    def __call__(self, batch_uint8: np.ndarray) -> CamBatch:
        """Score ``(n, side, side[, 1])`` uint8 images (already preprocessed)."""
        batch = np.asarray(batch_uint8, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[..., None]
        probabilities, raw, embeddings = self._run(batch)
        raw, probabilities = raw.numpy(), probabilities.numpy()
        return CamBatch(probabilities, absolute_heatmaps(raw, probabilities), embeddings.numpy(), raw)


def absolute_heatmaps(raw: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Each map's shape (over its own peak) times its film's probability: colour in probability units."""
    peaks = raw.reshape(len(raw), -1).max(axis=1)
    shape = raw / np.where(peaks > 0, peaks, 1.0)[:, None, None]
    return (shape * np.asarray(probabilities, np.float32)[:, None, None]).astype(np.float32)


# OpenCV's jet in RGB order, as a user colour map: one pass per overlay instead of a map and a BGR->RGB swap
_JET_RGB = np.ascontiguousarray(
    cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), cv2.COLORMAP_JET)[:, :, ::-1]
)

def overlay(
    gray: np.ndarray,
    heatmap: np.ndarray,
    box: CropBox | None = None,
    alpha: float = 0.4,
    max_side: int = DISPLAY_SIDE,
) -> np.ndarray:
    """Blend a heatmap (jet colours) over the original picture, placed on the region the model saw.

    Colour and opacity both grow with the heatmap's value: ``alpha`` is the opacity of a value of 1 and
    a value of 0 leaves the picture untouched, so a film with little evidence stays readable as an X-ray
    instead of sinking under a blue wash. Outside ``box`` (trimmed borders, cropped margins) the picture
    is shown without colour: the model never looked there. The picture is shrunk to ``max_side`` first;
    a browser shows no more anyway.
    """
    height, width = gray.shape
    if box is None:
        box = CropBox(0, 0, height, width)
    scale = display_scale(height, width, max_side)
    gray = display_gray(gray, max_side)
    rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    top, left = round(box.top * scale), round(box.left * scale)
    bottom = max(top + 1, min(rgb.shape[0], round(box.bottom * scale)))
    right = max(left + 1, min(rgb.shape[1], round(box.right * scale)))
    heat = cv2.resize(heatmap.astype(np.float32), (right - left, bottom - top), interpolation=cv2.INTER_CUBIC)
    np.clip(heat, 0.0, 1.0, out=heat)
    colours = cv2.applyColorMap((heat * 255.0).astype(np.uint8), _JET_RGB)
    weight = heat * np.float32(alpha)  # per-pixel opacity; blendLinear does it in one pass (3x numpy's speed)
    rgb[top:bottom, left:right] = cv2.blendLinear(colours, rgb[top:bottom, left:right], weight, 1.0 - weight)
    return rgb
