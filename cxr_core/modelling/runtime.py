"""Serving runtimes for a registered classifier and lung model: Keras (what ships), TFLite and ONNX Runtime.

Why this module exists: issue #23 asked for the serving runtime to be chosen by measurement, and a
runtime can only be compared if it returns what Keras returns, Grad-CAM included. Neither TFLite nor
ONNX Runtime can run the gradient ops that Keras' Grad-CAM uses (TFLite's Python interpreter has no
Flex delegate for ``ReluGrad``/``MaxPoolGrad``; ONNX has no inference-time gradient), so a converted
classifier is the forward network with three outputs, read from the model file rather than from a
hard-coded layer list: the probability, the embedding (the OOD check's input) and the last feature
maps (the activation after the deepest convolution and its per-position normalisation/ReLU, exactly
where :class:`cxr_core.modelling.gradcam.GradCam` looks). The gradient of the pre-sigmoid logit with
respect to those maps is then taken in numpy through the head's layers (:func:`head_gradient`), which
are few and simple in every network this project builds: max pooling, flatten, global average
pooling, dense, dropout, ReLU. For a head that is global average pooling plus one dense unit the
gradient is the dense weights over the map's area, so Grad-CAM equals CAM there.

The measurement (``bench/runtimes.py``, recorded in docs/performance.md) decides which runtime serves;
training always stays in Keras, and converted models are made here from the registered ``.keras``
file, never downloaded. tf2onnx and onnxruntime are optional: without them the ONNX path reports that
it is unavailable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxr_core.modelling.gradcam import CamBatch, absolute_heatmaps
from cxr_core.modelling.keras_archive import ArchiveLayer, ArchiveModel, read_archive
from cxr_core.modelling.networks import EMBEDDING, OUTPUT, features_end
from cxr_core.settings import Layout

# Head layers whose backward pass head_gradient knows.
HEAD_LAYERS = {"MaxPooling2D", "Flatten", "GlobalAveragePooling2D", "Dense", "Dropout", "ReLU", "Activation"}


class UnsupportedModel(ValueError):
    """The network has a head layer whose gradient :func:`head_gradient` does not know."""


def layer_kind(layer) -> str:
    """A layer's Keras class name, for a live Keras layer or one read from its archive alike."""
    return layer.kind if isinstance(layer, ArchiveLayer) else layer.__class__.__name__


def split_at_features(model):
    """(layers up to the feature maps, head layers, output Dense) of a classifier, as GradCam splits it.

    ``model`` is a Keras model or an :class:`ArchiveModel` (the same layers read from the file without
    Keras); the split is the same for both (tests/modelling/test_keras_archive.py)."""
    chain = [layer for layer in model.layers if layer_kind(layer) != "InputLayer"]
    split = features_end([layer_kind(layer) for layer in chain])
    head, output = chain[split:-1], chain[-1]
    if output.name != OUTPUT:
        raise ValueError(f"model must end in the '{OUTPUT}' dense layer")
    unknown = sorted({layer_kind(layer) for layer in head} - HEAD_LAYERS)
    if unknown:
        raise UnsupportedModel(f"no numpy gradient for head layers {unknown}")
    return chain[:split], head, output


def forward_model(model):
    """A Keras model of the same weights with outputs (probability (n,), embedding, feature maps)."""
    import keras

    to_features, head, output = split_at_features(model)
    features = to_features[-1].output
    embedding = model.get_layer(EMBEDDING).output if EMBEDDING in {layer.name for layer in head} else features
    probability = keras.layers.Reshape((), name="probability")(output.output)
    return keras.Model(model.inputs, [probability, embedding, features], name=f"{model.name}_forward")


def _activation_name(layer) -> str:
    if isinstance(layer, ArchiveLayer):
        return layer.activation_name
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "linear") if activation is not None else "linear"


@dataclass(frozen=True)
class HeadStep:
    """One head layer as plain numpy: what its forward and backward passes need, read once."""

    kind: str
    activation: str = "linear"
    pool: tuple = ()
    strides: tuple = ()
    padding: str = "valid"
    kernel: np.ndarray | None = None
    bias: np.ndarray | None = None


@dataclass(frozen=True)
class FrozenHead:
    """A classifier's head and output weights copied out of Keras when a scorer is built.

    Reading a Keras variable into numpy costs about half a millisecond, on every film, when done per
    call; a served model's weights do not change (the converted forward network froze them too).
    """

    steps: tuple[HeadStep, ...]
    output_kernel: np.ndarray


def freeze_head(head, output) -> FrozenHead:
    """The head layers (as :func:`split_at_features` returns them) with their weights as numpy arrays."""
    steps = []
    for layer in head:
        kind = layer_kind(layer)
        if kind == "MaxPooling2D":
            settings = layer.config if isinstance(layer, ArchiveLayer) else {
                "pool_size": layer.pool_size, "strides": layer.strides, "padding": layer.padding
            }  # fmt: skip
            pool = tuple(settings["pool_size"])
            steps.append(HeadStep(kind, pool=pool, strides=tuple(settings["strides"] or pool),
                                  padding=settings["padding"]))  # fmt: skip
        elif kind == "Dense":
            steps.append(HeadStep(kind, _activation_name(layer), kernel=np.asarray(layer.kernel, np.float32),
                                  bias=np.asarray(layer.bias, np.float32)))  # fmt: skip
        elif kind == "Activation":
            steps.append(HeadStep(kind, _activation_name(layer)))
        else:  # Flatten, GlobalAveragePooling2D, ReLU, Dropout (identity at inference)
            steps.append(HeadStep(kind, "relu" if kind == "ReLU" else "linear"))
    return FrozenHead(tuple(steps), np.asarray(output.kernel, np.float32)[:, 0].copy())


def head_gradient(head: FrozenHead, features: np.ndarray) -> np.ndarray:
    """d(pre-sigmoid logit)/d(feature maps) for a batch, by the head's layers' backward passes in numpy.

    Max pooling sends each window's gradient to its first maximum in row-major order, as TensorFlow's
    ``MaxPoolGrad`` does; ReLU's derivative at exactly 0 is 0, as TensorFlow's.
    """
    activations = [np.asarray(features, np.float32)]
    x = activations[0]
    for step in head.steps:  # forward, keeping what each backward step needs
        if step.kind == "MaxPooling2D":
            x = _max_pool(x, step.pool, step.strides, step.padding)
        elif step.kind == "Flatten":
            x = x.reshape(len(x), -1)
        elif step.kind == "GlobalAveragePooling2D":
            x = x.mean(axis=(1, 2))
        elif step.kind == "Dense":
            x = _activate(x @ step.kernel + step.bias, step.activation)
        elif step.kind in ("ReLU", "Activation"):
            x = _activate(x, step.activation)
        activations.append(x)  # Dropout: identity at inference
    grad = np.broadcast_to(head.output_kernel, x.shape).copy()
    for step, before, after in zip(
        reversed(head.steps), reversed(activations[:-1]), reversed(activations[1:]), strict=True
    ):
        if step.kind == "MaxPooling2D":
            grad = _max_pool_backward(before, grad, step.pool, step.strides)
        elif step.kind == "Flatten":
            grad = grad.reshape(before.shape)
        elif step.kind == "GlobalAveragePooling2D":
            h, w = before.shape[1:3]
            grad = np.broadcast_to(grad[:, None, None, :] / (h * w), before.shape).copy()
        elif step.kind == "Dense":
            if step.activation == "relu":
                grad = grad * (after > 0)
            elif step.activation != "linear":
                raise UnsupportedModel(f"no numpy gradient for a Dense layer with {step.activation}")
            grad = grad @ step.kernel.T
        elif step.kind in ("ReLU", "Activation"):
            grad = grad * (after > 0)
    return grad.astype(np.float32, copy=False)


def _activate(z: np.ndarray, name: str) -> np.ndarray:
    if name == "relu":
        return np.maximum(z, 0)
    if name == "linear":
        return z
    raise UnsupportedModel(f"no numpy gradient for activation {name}")


def _windows(x: np.ndarray, pool, strides, padding: str = "valid"):
    (ph, pw), (sh, sw) = tuple(pool), tuple(strides or pool)
    if padding != "valid" or (ph, pw) != (sh, sw):
        raise UnsupportedModel("max pooling other than non-overlapping 'valid' windows")
    n, h, w, c = x.shape
    oh, ow = h // ph, w // pw
    blocks = x[:, : oh * ph, : ow * pw].reshape(n, oh, ph, ow, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return blocks.reshape(n, oh, ow, ph * pw, c), (ph, pw)


def _max_pool(x, pool, strides, padding):
    blocks, _ = _windows(x, pool, strides, padding)
    return blocks.max(axis=3)


def _max_pool_backward(x, grad, pool, strides):
    blocks, (ph, pw) = _windows(x, pool, strides)
    n, oh, ow, _, c = blocks.shape
    first = blocks.argmax(axis=3)  # the first maximum of each window, row-major
    routed = np.zeros(blocks.shape, np.float32)
    np.put_along_axis(routed, first[:, :, :, None, :], grad[:, :, :, None, :], axis=3)
    routed = routed.reshape(n, oh, ow, ph, pw, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, oh * ph, ow * pw, c)
    out = np.zeros(x.shape, np.float32)
    out[:, : oh * ph, : ow * pw] = routed
    return out


def cam_batch(probabilities, embeddings, features, head: FrozenHead) -> CamBatch:
    """The CamBatch GradCam returns, from a runtime's three outputs."""
    features = np.asarray(features, np.float32)
    weights = head_gradient(head, features).mean(axis=(1, 2), keepdims=True)
    raw = np.maximum((weights * features).sum(axis=-1), 0).astype(np.float32)
    probabilities = np.asarray(probabilities, np.float32).reshape(-1)
    return CamBatch(
        probabilities, absolute_heatmaps(raw, probabilities), np.asarray(embeddings, np.float32), raw
    )


# ------------------------------------------------------------------------------------------ runtimes
class KerasScorer:
    """What serves today: :class:`GradCam`'s one compiled pass (probability, Grad-CAM, embedding)."""

    name = "keras"

    def __init__(self, model):
        from cxr_core.modelling.gradcam import GradCam

        self._cam = GradCam(model)
        self._model = model
        self._forward = None  # built on first use: serving never calls it

    def __call__(self, batch_uint8: np.ndarray) -> CamBatch:
        return self._cam(batch_uint8)

    def forward(self, batch_uint8: np.ndarray) -> list[np.ndarray]:
        """The network's bare inference in Keras, no Grad-CAM: (probabilities, embeddings, feature maps),
        the same network and outputs the other runtimes convert (:func:`forward_model`)."""
        import tensorflow as tf

        if self._forward is None:
            network = forward_model(self._model)
            self._forward = tf.function(
                lambda x: network(x, training=False),
                input_signature=[tf.TensorSpec([None, *self._model.input_shape[1:]], tf.float32)],
            )
        return [output.numpy() for output in self._forward(_as_float_batch(batch_uint8))]


def _as_float_batch(batch_uint8: np.ndarray) -> np.ndarray:
    batch = np.asarray(batch_uint8, dtype=np.float32)
    return batch[..., None] if batch.ndim == 3 else batch


class TfliteScorer:
    """The forward network in TFLite (XNNPACK delegate, float32), Grad-CAM in numpy.

    What serves a classifier whose version carries ``model.tflite`` (see :func:`serving_scorer`):
    measured twice as fast as Keras for one film and level with it batched, with the same outputs.
    TFLite's shapes are fixed once allocated, so there are two interpreters, one for a whole batch of
    ``BATCH`` and one for a single film; any other batch size goes through them in pieces, which keeps
    memory bounded whatever sizes the callers send. A lock: an interpreter is not safe to call from two
    threads, and the dashboard serves sessions in threads.
    """

    name = "tflite"
    BATCH = 32

    def __init__(self, model, threads: int | None = None, blob: bytes | None = None):
        import os
        import threading

        self._head = freeze_head(*split_at_features(model)[1:])
        self._blob = blob if blob is not None else to_tflite(forward_model(model))
        self._threads = threads or min(4, os.cpu_count() or 1)
        self._interpreters: dict[int, tuple] = {}
        self._lock = threading.Lock()

    def _interpreter(self, batch: int, side: int):
        if batch not in self._interpreters:
            interpreter = new_interpreter(self._blob, self._threads)
            index = interpreter.get_input_details()[0]["index"]
            interpreter.resize_tensor_input(index, [batch, side, side, 1])
            interpreter.allocate_tensors()
            outputs = sorted(interpreter.get_output_details(), key=lambda d: len(d["shape"]))
            self._interpreters[batch] = (interpreter, index, [d["index"] for d in outputs])
        return self._interpreters[batch]

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        interpreter, index, outputs = self._interpreter(len(batch), batch.shape[1])
        interpreter.set_tensor(index, batch)
        interpreter.invoke()
        return [interpreter.get_tensor(i).copy() for i in outputs]

    def __call__(self, batch_uint8: np.ndarray) -> CamBatch:
        return cam_batch(*self.forward(batch_uint8), self._head)

    def forward(self, batch_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The network's bare inference in TFLite: (probabilities, embeddings, feature maps), no Grad-CAM."""
        batch = _as_float_batch(batch_uint8)
        whole = len(batch) - len(batch) % self.BATCH
        with self._lock:
            pieces = [self._run(batch[i : i + self.BATCH]) for i in range(0, whole, self.BATCH)]
            pieces += [self._run(batch[i : i + 1]) for i in range(whole, len(batch))]
        probabilities, embeddings, features = (np.concatenate(parts) for parts in zip(*pieces, strict=True))
        return probabilities, embeddings, features


class OnnxScorer:
    """The forward network converted with tf2onnx and run by ONNX Runtime (CPU), Grad-CAM in numpy."""

    name = "onnxruntime"

    def __init__(self, model, threads: int | None = None):
        import onnxruntime

        self._head = freeze_head(*split_at_features(model)[1:])
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._session = onnxruntime.InferenceSession(
            to_onnx(forward_model(model)), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def __call__(self, batch_uint8: np.ndarray) -> CamBatch:
        return cam_batch(*self.forward(batch_uint8), self._head)

    def forward(self, batch_uint8: np.ndarray) -> list[np.ndarray]:
        """The network's bare inference in ONNX Runtime: (probabilities, embeddings, feature maps)."""
        return self._session.run(None, {self._input: _as_float_batch(batch_uint8)})


def new_interpreter(blob: bytes, threads: int | None):
    """A TFLite interpreter (XNNPACK is its default delegate for float models).

    LiteRT's (``ai-edge-litert``), the successor TensorFlow points to from its deprecated
    ``tf.lite.Interpreter``: the same kernels without importing TensorFlow, which took about 3 s of a
    serving process's start (docs/performance.md). Equal to Keras within the tests' 1e-4 like before.
    """
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=blob, num_threads=threads)


def to_tflite(model) -> bytes:
    """A Keras model (float32 input of any batch size) as a TFLite flatbuffer, builtin ops only.

    Converted without a ``trackable_obj`` on purpose (TF warns that this path is deprecated): with the
    Keras 3 model passed as one, its weights stay resource variables that the interpreter reads as
    uninitialised, and every output is NaN. Without it they are frozen into constants.
    """
    import tensorflow as tf

    shape = [None, *model.input_shape[1:]]
    function = tf.function(
        lambda x: model(x, training=False), input_signature=[tf.TensorSpec(shape, tf.float32)]
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()])
    return converter.convert()


def to_onnx(model) -> bytes:
    """A Keras model (float32 input of any batch size) as an ONNX graph (tf2onnx, opset 17)."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="image"),)
    function = tf.function(lambda x: model(x, training=False), input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=17)
    return proto.SerializeToString()


RUNTIMES = {"keras": KerasScorer, "tflite": TfliteScorer, "onnxruntime": OnnxScorer}


# ------------------------------------------------------------------- converted files beside a model
TFLITE_FILE = Layout.TFLITE  # beside a version's model.keras; its sha256 is tflite_sha256 in metadata.json
LUNG_TFLITE = TFLITE_FILE


def read_converted(model_dir, metadata: dict, what: str, keras_bytes: bytes | None = None) -> bytes | None:
    """A version's TFLite twin, if it has one for the weights in its model.keras, checksum checked.

    The twin records the sha256 of the model.keras it was converted from (``tflite_model_sha256``;
    twins made before that field existed were made at registration, from the weights of
    ``model_sha256``). It is compared with the file itself, not with the metadata alone: when
    model.keras was replaced since, the twin is stale and Keras serves the weights that are there (a
    warning says so). A damaged or swapped twin file is refused, like model.keras itself.
    ``keras_bytes``: model.keras as the caller already read it, so that what is checked here is what it
    goes on to read (the classifier's head weights), not the file as it may be a moment later.
    """
    import hashlib
    import logging
    from pathlib import Path

    from cxr_core.errors import ModelError

    model_dir = Path(model_dir)
    path, expected = model_dir / TFLITE_FILE, metadata.get("tflite_sha256")
    if not expected or not path.is_file():
        return None
    made_from = metadata.get("tflite_model_sha256") or metadata.get("model_sha256")
    keras_file = model_dir / Layout.MODEL
    if keras_bytes is None and keras_file.is_file():
        keras_bytes = keras_file.read_bytes()
    weights = None if keras_bytes is None else hashlib.sha256(keras_bytes).hexdigest()
    if made_from is None or made_from != weights:
        logging.getLogger(__name__).warning(
            "the converted %s in %s was not made from the weights now in its model.keras: Keras serves it",
            what, model_dir,
        )  # fmt: skip
        return None
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != expected:
        raise ModelError(f"the converted {what} in {model_dir} is corrupt (checksum mismatch)")
    return blob


CLASSIFIER_RUNTIMES = ("tflite", "keras")


def serving_scorer(model_dir, metadata: dict, load_keras) -> tuple[object, ArchiveModel | None]:
    """The classifier's scorer, and the model file's layers when they were read without Keras.

    TFLite when the version carries its checked twin, its head's weights read from the model file
    (:func:`cxr_core.modelling.keras_archive.read_archive`), so no TensorFlow is imported; Keras
    (``load_keras()``, safe mode) when there is no twin or the file is not one the reader takes.
    ``CXR_CLASSIFIER_RUNTIME=keras`` forces Keras (a comparison, or a suspected runtime problem); any
    other value than the two is refused rather than read as one of them.
    """
    import os
    from pathlib import Path

    from cxr_core.errors import ModelError

    chosen = os.environ.get("CXR_CLASSIFIER_RUNTIME", "tflite").strip().lower()
    if chosen not in CLASSIFIER_RUNTIMES:
        raise ModelError(
            f"CXR_CLASSIFIER_RUNTIME is {chosen!r}; it must be one of {', '.join(CLASSIFIER_RUNTIMES)}"
        )
    if chosen == "tflite":
        keras_file = Path(model_dir) / Layout.MODEL
        keras_bytes = keras_file.read_bytes() if keras_file.is_file() else None
        blob = read_converted(model_dir, metadata, "classifier", keras_bytes)
        if blob is not None:
            archive = read_archive(keras_bytes)  # the very bytes whose checksum the twin records
            return TfliteScorer(archive or load_keras(), blob=blob), archive
    return KerasScorer(load_keras()), None


def write_classifier_tflite(model_dir, model=None) -> str | None:
    """Convert a classifier folder's model.keras to model.tflite beside it; return its sha256.

    None, and no file, when the network's head has no numpy gradient (:class:`UnsupportedModel`, also
    raised from inside the check for an activation or pooling it does not know) or the converted
    network does not reproduce Keras on the check batch within ``EQUALITY_TOLERANCE``: Keras then
    serves it, as before. Converting costs seconds, so it is done once, when the model is trained or
    converted by ``models convert``, never at start-up.
    """
    from pathlib import Path

    from cxr_core.fsutil import write_bytes_atomic
    from cxr_core.registry.store import sha256_file

    model_dir = Path(model_dir)
    if model is None:
        from cxr_core.modelling.networks import load_model

        model = load_model(model_dir / Layout.MODEL)
    try:
        split_at_features(model)
        blob = to_tflite(forward_model(model))
        if conversion_error(model, blob) > EQUALITY_TOLERANCE:
            return None
    except UnsupportedModel:
        return None
    target = model_dir / TFLITE_FILE
    write_bytes_atomic(target, blob)
    return sha256_file(target)


EQUALITY_TOLERANCE = 1e-4  # |dp| and heatmap, as issue #23 asks of a serving runtime


def conversion_error(model, blob: bytes) -> float:
    """Largest difference from Keras on a fixed check batch of film-like inputs.

    Probability and heatmap absolutely, the embedding (the OOD check's input) relative to its scale.
    33 inputs, so that both of the scorer's interpreters (a batch of 32 and a single film) are
    compared. The inputs are smooth random fields (not white noise, which saturates every network at
    one end), so the probabilities and maps compared spread over their range. Real films are compared
    in the tests; this guards the conversion wherever it runs.
    """
    import cv2

    side = int(model.input_shape[1])
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (TfliteScorer.BATCH + 1, 8, 8), dtype=np.uint8)
    inputs = np.stack([cv2.resize(c, (side, side), interpolation=cv2.INTER_CUBIC) for c in coarse])
    expected = KerasScorer(model)(inputs)
    got = TfliteScorer(model, blob=blob)(inputs)
    scale = max(1.0, float(np.abs(expected.embeddings).max()))
    return float(
        max(
            np.abs(got.probabilities - expected.probabilities).max(),
            np.abs(got.heatmaps - expected.heatmaps).max(),
            np.abs(got.embeddings - expected.embeddings).max() / scale,
        )
    )


# --------------------------------------------------------------------------------- the lung network
def lung_float_twin(model):
    """The lung network with a float32 input (same weights): TFLite and ONNX take no uint8 Rescaling.

    The cast changes nothing: the network rescales its input by 1/255 either way.
    """
    import keras

    side = int(model.input_shape[1])
    inputs = keras.Input((side, side, 1), dtype="float32", name="image")
    return keras.Model(inputs, model(inputs), name="lungs_float")


def write_lung_tflite(model_dir) -> str:
    """Convert a lung model folder's model.keras to model.tflite beside it; return the file's sha256.

    Made once, when the model is trained or registered: converting costs seconds (more than the
    whole start-up it saves), so serving only ever loads the file.
    """
    from pathlib import Path

    import keras

    from cxr_core.fsutil import write_bytes_atomic
    from cxr_core.registry.store import sha256_file
    from cxr_core.settings import Layout

    model_dir = Path(model_dir)
    model = keras.saving.load_model(str(model_dir / Layout.MODEL), compile=False, safe_mode=True)
    target = model_dir / LUNG_TFLITE
    write_bytes_atomic(target, to_tflite(lung_float_twin(model)))
    return sha256_file(target)


class TfliteLungForward:
    """``forward(smalls uint8 (n, side, side)) -> probabilities (n, side, side)`` with TFLite (XNNPACK).

    One interpreter per batch size seen (TFLite's shapes are fixed once allocated), and a lock: an
    interpreter is not safe to call from two threads, and the dashboard serves sessions in threads.
    """

    def __init__(self, blob: bytes, side: int, threads: int | None = None):
        import os
        import threading

        self._blob, self._side = blob, side
        self._threads = threads or min(4, os.cpu_count() or 1)
        self._interpreters: dict[int, tuple] = {}
        self._lock = threading.Lock()

    def _interpreter(self, n: int):
        if n not in self._interpreters:
            interpreter = new_interpreter(self._blob, self._threads)
            index = interpreter.get_input_details()[0]["index"]
            interpreter.resize_tensor_input(index, [n, self._side, self._side, 1])
            interpreter.allocate_tensors()
            self._interpreters[n] = (interpreter, index, interpreter.get_output_details()[0]["index"])
        return self._interpreters[n]

    def __call__(self, smalls: np.ndarray) -> np.ndarray:
        batch = np.asarray(smalls, np.float32)[..., None]
        with self._lock:
            interpreter, index, out = self._interpreter(len(batch))
            interpreter.set_tensor(index, batch)
            interpreter.invoke()
            return interpreter.get_tensor(out)[..., 0]


def lung_forward(model, runtime: str, threads: int | None = None):
    """``forward(smalls uint8 (n, side, side)) -> probabilities (n, side, side)`` in one runtime.

    The network converted from the same model here; Keras' own path is
    :func:`cxr_core.modelling.lungs.make_batch_predictor`.
    """
    side = int(model.input_shape[1])
    if runtime == "tflite":
        return TfliteLungForward(to_tflite(lung_float_twin(model)), side, threads)
    if runtime == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(
            to_onnx(lung_float_twin(model)), options, providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name
        return lambda smalls: session.run(None, {name: np.asarray(smalls, np.float32)[..., None]})[0][..., 0]
    raise ValueError(f"unknown runtime {runtime!r}; expected tflite or onnxruntime")
