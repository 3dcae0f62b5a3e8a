"""Scoring one uploaded X-ray: decode a 512x512 PNG, check, lung fields, preprocess, probability, Grad-CAM overlay.

Subject: the serving path of the dashboard, a :class:`cxr_core.modelling.predictor.Predictor` loaded once, then
``Predictor.screen`` and the Grad-CAM overlay the page shows, per request.
Baseline, in the same process and interleaved with the subject: the original serving path done
honestly, i.e. the same decoding, lung check and crop, preprocessing and overlay, but the models loaded
from disk on every request, ``model.predict`` on the one image and an eager Grad-CAM tape.

    .venv/bin/python bench/score_one.py            # 300 images, 30 baseline requests
    .venv/bin/python bench/score_one.py --quick    # a few of each
"""

from __future__ import annotations

import time

import numpy as np
from _common import emit, log, machine, median, parser, pct, pngs_512, target

from cxr_core.settings import Layout


def eager_gradcam(model, batch: np.ndarray) -> np.ndarray:
    """Grad-CAM of the last convolution, eagerly, as a per-request implementation computes it."""
    import tensorflow as tf

    from cxr_core.modelling.networks import last_conv_name

    conv_name = last_conv_name(model)
    images = tf.convert_to_tensor(batch)
    with tf.GradientTape() as tape:
        features = images
        for layer in model.layers[1:]:
            if layer.name == "tb_probability":
                logit = tf.matmul(features, layer.kernel) + layer.bias
                break
            features = layer(features, training=False)
            if layer.name == conv_name:
                conv = features
                tape.watch(conv)
    grads = tape.gradient(logit, conv)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1))
    cam = cam / (tf.reduce_max(cam, axis=(1, 2), keepdims=True) + 1e-8)
    return cam.numpy()[0]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=300, help="images scored by the subject")
    p.add_argument("--baseline-size", type=int, default=30, help="requests through the original path")
    p.add_argument("--model", default=None, help="registry version or model folder (default: current)")
    args = p.parse_args()
    if args.quick:
        args.size, args.baseline_size = 6, 2
    started = time.perf_counter()

    from cxr_core.imaging.preprocess import to_model_input
    from cxr_core.modelling.gradcam import overlay
    from cxr_core.modelling.lungs import LungModel
    from cxr_core.modelling.networks import load_model
    from cxr_core.modelling.predictor import Predictor
    from cxr_core.registry.store import Registry

    files = pngs_512(args.data)
    files = [files[i % len(files)] for i in range(args.size)]
    uploads = [(path.name, path.read_bytes()) for path in files]  # an upload arrives as bytes
    model_dir, _ = Registry().resolve_with_warning(args.model)

    load_started = time.perf_counter()
    predictor = Predictor(model_dir)
    predictor.screen(uploads[:1])  # the first call traces the compiled function
    first_load_s = time.perf_counter() - load_started

    def subject(name: str, data: bytes) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        item = predictor.screen([(name, data)])[0]
        t1 = time.perf_counter()
        overlay(item.image.pixels, item.prediction.heatmap, item.box, 0.4)
        return t1 - t0, time.perf_counter() - t0, item.prediction.probability

    def baseline(name: str, data: bytes) -> tuple[float, float]:
        t0 = time.perf_counter()
        model = load_model(model_dir / Layout.MODEL)
        # the same input path as the subject (lung check and crop), its lung model also loaded per request
        lungs = LungModel(predictor.lungs.model_dir) if predictor.lungs is not None else None
        prepared = to_model_input(
            data, lungs=lungs, crop_to_lungs=predictor.crop_to_lungs, lung_margin=predictor.lung_margin,
            mask_to_lungs=predictor.mask_to_lungs,
        )
        image, box = prepared.image, prepared.box
        batch = prepared.pixels[None, :, :, None].astype(np.float32)
        probability = float(model.predict(batch, verbose=0)[0, 0])
        heatmap = eager_gradcam(model, batch)
        overlay(image.pixels, heatmap, box, 0.4)
        return time.perf_counter() - t0, probability

    for upload in uploads[:3]:
        subject(*upload)
    baseline(*uploads[0])  # its first call imports and builds what later requests reuse

    every = max(1, len(uploads) // max(1, args.baseline_size))
    score_s, total_s, base_s, differences = [], [], [], []
    for i, upload in enumerate(uploads):
        score, total, probability = subject(*upload)
        score_s.append(score)
        total_s.append(total)
        if i % every == 0 and len(base_s) < args.baseline_size:
            seconds, base_probability = baseline(*upload)
            base_s.append(seconds)
            differences.append(abs(base_probability - probability))
    log(
        f"score_one: subject p50 {median(total_s) * 1000:.2f} ms, baseline p50 {median(base_s) * 1000:.1f} ms"
    )

    p50, p95 = median(total_s) * 1000, pct(total_s, 95) * 1000
    base_p50, base_p95 = median(base_s) * 1000, pct(base_s, 95) * 1000
    speedup = base_p50 / p50
    emit(
        {
            "benchmark": "score_one",
            "machine": machine(),
            "params": {"images": len(total_s), "baseline_requests": len(base_s), "model": str(model_dir)},
            "figures": {
                "p50_ms": round(p50, 3),
                "p95_ms": round(p95, 3),
                "score_only_p50_ms": round(median(score_s) * 1000, 3),
                "score_only_p95_ms": round(pct(score_s, 95) * 1000, 3),
                "first_request_after_start_s": round(first_load_s, 3),
            },
            "baseline": {
                "what": "classifier and lung model loaded from disk per request, model.predict on one image, eager Grad-CAM",
                "p50_ms": round(base_p50, 3),
                "p95_ms": round(base_p95, 3),
                "max_probability_difference": float(max(differences)),
            },
            "ratios": {"speedup_p50": round(speedup, 2), "speedup_p95": round(base_p95 / p95, 2)},
            "targets": {
                "p50": target(p50, 15.0, "<=", "p50 <= 15 ms with Grad-CAM"),
                "speedup": target(speedup, 50.0, ">=", ">= 50x faster than the original serving path"),
            },
            "seconds": round(time.perf_counter() - started, 1),
        },
        args.output,
    )


if __name__ == "__main__":
    main()
