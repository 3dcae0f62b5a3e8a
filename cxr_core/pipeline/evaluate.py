"""Stage 3, evaluate: the held-out test split, scored through the serving path, reported honestly.

The test images go through :class:`cxr_core.modelling.predictor.Predictor`, the very object the dashboard and the
CLI use, at the threshold chosen on validation. Outputs are DVC-friendly: ``metrics.json`` (metrics),
``plots/*.json`` (ROC, PR, calibration, confusion), and ``predictions.csv`` (one row per test image,
for the dashboard's gallery of errors). Per-source metrics are reported because a model can score well
by recognising the hospital instead of the disease; figures at a fixed 0.5 threshold are included so
the result can be set beside the original system's (accuracy 0.975, TB recall 0.922, precision 0.935).
"""

import csv
import json
from pathlib import Path

import cv2
import numpy as np

from cxr_core import metrics, settings
from cxr_core.fsutil import atomic_directory, write_json_atomic
from cxr_core.pipeline.ingest import load_extras, load_split
from cxr_core.settings import Layout

ORIGINAL_SYSTEM = {"accuracy": 0.975, "tb_recall": 0.922, "tb_precision": 0.935, "threshold": 0.5}

# Acquisition robustness: the same films as a modern detector's 3,000-px image, softer and sharper.
# Hospitals differ most in resolution and in the vendor's edge enhancement; a network that reads them
# as disease moves its probability with the hospital, not the patient.
ACQUISITION_TOLERANCE = 0.05  # |change of probability| allowed, the same as between file formats
UPSCALE_SIDE = 3000
BLUR_SIGMA = 0.7  # px of the network's input
UNSHARP_AMOUNT, UNSHARP_SIGMA = 0.5, 1.0


def run_evaluate(
    ingest_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    params: dict | None = None,
) -> dict:
    """Score the test split with the trained model and write metrics, plots and predictions."""
    from cxr_core.modelling.predictor import Predictor

    params = settings.section("evaluate", params)
    predictor = Predictor(model_dir)
    y_test, probabilities, rows, predictions, test_images = score_split(ingest_dir, predictor, "test")
    threshold = predictor.threshold
    report = metrics.evaluate(
        y_test,
        probabilities,
        threshold,
        sources=[row["source"] for row in rows],
        n_boot=int(params["n_boot"]),
        seed=int(params["seed"]),
    )
    report["at_fixed_0_5"] = _at_half(y_test, probabilities)
    report["original_system"] = ORIGINAL_SYSTEM
    report["threshold_rule"] = predictor.metadata.get("threshold_rule")
    sources = np.array([row["source"] for row in rows])
    report["at_fixed_0_5_per_source"] = {
        source: _at_half(y_test[sources == source], probabilities[sources == source])
        for source in sorted(set(sources))
    }
    report["evidence"] = evidence_by_source(y_test, sources, predictions)
    test_extras = load_extras(ingest_dir, rows)  # lung masks and audit features of the test films, read once
    report["evidence_where"] = evidence_where(test_extras, y_test, rows, predictions)
    report["shortcut"] = shortcut_audit(ingest_dir, test_extras, y_test, probabilities, rows, int(params["seed"]))
    reread = reread_test_films(rows, y_test, probabilities, predictions, predictor)
    report["framing"] = reread["framing"]
    report["acquisition"] = {
        **acquisition_of_inputs(test_images, predictor, probabilities, rows),
        "upscale3000": reread["upscale"],
        "tolerance": ACQUISITION_TOLERANCE,
    }
    report["strips_and_markers"] = reread["strips"]
    report["held_out_markers"] = reread["held_out_markers"]
    for source, shares in reread["film_band_shares"].items():  # the film's own edges, not the input's
        report["evidence"].setdefault(source, {"tb_films": len(shares)})["film_band_share"] = round(
            float(np.mean(shares)), 4
        )
    bands = [share for shares in reread["film_band_shares"].values() for share in shares]
    if bands and "all" in report["evidence"]:
        report["evidence"]["all"]["film_band_share"] = round(float(np.mean(bands)), 4)

    with atomic_directory(out_dir) as staging:
        write_json_atomic(staging / Layout.METRICS, report)
        (staging / Layout.PLOTS).mkdir()
        for name, points in metrics.curves(y_test, probabilities, threshold).items():
            write_json_atomic(staging / Layout.PLOTS / f"{name}.json", points)
        with open(staging / Layout.PREDICTIONS, "w", newline="") as handle:
            writer = csv.DictWriter(
                handle,
                fieldnames=["path", "member", "source", "label", "probability", "predicted", "correct"],
            )
            writer.writeheader()
            data_root = dataset_root(json.loads((Path(ingest_dir) / Layout.SUMMARY).read_text())["data_path"])
            for row, label, probability in zip(rows, y_test, probabilities, strict=True):
                predicted = int(probability >= threshold)
                writer.writerow(
                    {
                        "path": portable_path(row["path"], data_root),
                        "member": row["member"],
                        "source": row["source"],
                        "label": int(label),
                        "probability": float(probability),  # unrounded: decisions at the threshold must match
                        "predicted": predicted,
                        "correct": int(predicted == label),
                    }
                )
    return report


def _at_half(y: np.ndarray, p: np.ndarray) -> dict:
    """The original system's own figures (a fixed 0.5), for a like-for-like comparison."""
    point = metrics.operating_point(y, p, 0.5)
    return {"n": int(len(y)), "accuracy": point["accuracy"], "tb_recall": point["sensitivity"],
            "tb_precision": point["ppv"]}  # fmt: skip


def evidence_by_source(labels: np.ndarray, sources: np.ndarray, predictions: list) -> dict:
    """Mean share of Grad-CAM mass in the frame's outer band, over the TB films of each source.

    A model that learned the hospital puts its evidence on borders, corners and chest walls; one that
    learned the disease puts it in the lungs. Measured on TB films, where there is evidence to place.
    """
    result = {}
    for source in sorted(set(sources)):
        shares = [
            prediction.evidence_outer_band
            for prediction, label, where in zip(predictions, labels, sources, strict=True)
            if label == 1 and where == source and prediction.evidence_outer_band is not None
        ]
        if shares:
            result[source] = {"tb_films": len(shares), "outer_band_share": round(float(np.mean(shares)), 4)}
    everything = [v["outer_band_share"] * v["tb_films"] for v in result.values()]
    films = sum(v["tb_films"] for v in result.values())
    if films:
        result["all"] = {"tb_films": films, "outer_band_share": round(float(sum(everything) / films), 4)}
    return result


def evidence_where(extras: dict, labels: np.ndarray, rows: list[dict], predictions: list) -> dict:
    """Where the evidence lies on the test films, per source and class, and on the lesion test set.

    Against the lung model's fields grown by 5 % of the film's longer side (hila and pleura count) and,
    on the held-out lesion test films, the radiologists' boxes: share of the Grad-CAM mass inside, and
    whether its peak is (pointing game), beside what a uniform map would score.
    """
    from cxr_core.modelling.evidence import film_evidence, summarise_evidence
    from cxr_core.pipeline.ingest import lesion_masks

    if not extras["available"] or not extras["masks"].any():
        return {"note": "not measured: this ingest has no lung masks (made without the lung model)"}
    side = extras["masks"].shape[1]
    boxes = lesion_masks(rows, side)
    groups: dict[str, list[dict]] = {}
    for i, (row, label, prediction) in enumerate(zip(rows, labels, predictions, strict=True)):
        if prediction.raw_heatmap is None:
            continue
        film = film_evidence(prediction.raw_heatmap, extras["masks"][i, ..., 1], boxes[i])
        film["outer_band"] = prediction.evidence_outer_band
        klass = "Tuberculosis" if label == 1 else "Normal"
        for key in (f"{row['source']}/{klass}", f"all/{klass}"):
            groups.setdefault(key, []).append(film)
        if str(row.get("lesion_test")) == "1":
            groups.setdefault("lesion_test", []).append(film)
    result = {key: summarise_evidence(films) for key, films in sorted(groups.items())}
    result["definition"] = (
        "lung_share: share of Grad-CAM mass inside the lung fields grown by 5 % of the film's longer side; "
        "peak_in_lungs: share of films whose map peak lies inside them; lesion_share / uniform_share: mass "
        "on the radiologists' boxes against the boxes' share of the view; pointing: peak on a box"
    )
    return result


def shortcut_audit(
    ingest_dir, test: dict, labels: np.ndarray, probabilities: np.ndarray, rows: list[dict], seed: int
) -> dict:
    """The low-level reference (:mod:`cxr_core.pipeline.shortcut`) trained on this split, beside the CNN."""
    from cxr_core.pipeline.shortcut import SHORTCUT_NAME, auc_or_none, fit_shortcut, shortcut_scores

    _, train_labels, train_rows = load_split(ingest_dir, "train")
    train = load_extras(ingest_dir, train_rows)
    if not (train["available"] and test["available"]):
        return {"note": "not measured: this ingest has no audit features"}
    model = fit_shortcut(train["thumbs"], train_labels, seed)
    scores = shortcut_scores(model, test["thumbs"])
    sources = np.array([row["source"] for row in rows])
    result = {"features": SHORTCUT_NAME, "all": {"cnn_auc": auc_or_none(labels, probabilities),
                                                 "shortcut_auc": auc_or_none(labels, scores)}}  # fmt: skip
    for source in sorted(set(sources)):
        where = sources == source
        result[source] = {"films": int(where.sum()), "cnn_auc": auc_or_none(labels[where], probabilities[where]),
                          "shortcut_auc": auc_or_none(labels[where], scores[where])}  # fmt: skip
    return result


# Strips and markers: a band of 5-15 % of the film's height along one edge, dark or bright (a scanner's
# or exporter's padding), and a burnt-in text marker on the film. Seeded per film, so runs compare.
STRIP_FRACTION = (0.05, 0.15)
MARKERS = ("L", "R", "PA", "AP", "ERECT", "PORTABLE")
# Markers training never draws (other words, other fonts: training draws FONT_HERSHEY_SIMPLEX and
# augment.MARKER_TEXTS, which hold the six above): the strips test then measures robustness to markers
# like the training's, these to markers unlike them. A test holds the two sets apart.
HELD_OUT_MARKERS = ("LEFT", "RIGHT", "STANDING", "CHEST", "DR K", "09:41", "H-17", "UPRIGHT", "ICU", "BED 2")
HELD_OUT_FONTS = ("FONT_HERSHEY_COMPLEX", "FONT_HERSHEY_TRIPLEX", "FONT_HERSHEY_DUPLEX", "FONT_HERSHEY_SCRIPT_SIMPLEX")


def add_strip_and_marker(
    gray: np.ndarray, seed: int, held_out: bool = False
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The film with a strip added on one edge and a text marker burnt in; and the strip's box
    (top, left, bottom, right) in the new picture's pixels. ``held_out``: a word and a font training never
    draws, at 0.7-1.3 times the size."""
    import cv2

    rng = np.random.default_rng(seed + (1_000_003 if held_out else 0))
    height, width = gray.shape
    film = gray.copy()
    text = str(rng.choice(HELD_OUT_MARKERS if held_out else MARKERS))
    font = getattr(cv2, str(rng.choice(HELD_OUT_FONTS))) if held_out else cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.5, height / 400.0) * (rng.uniform(0.7, 1.3) if held_out else 1.0)
    (text_w, text_h), _ = cv2.getTextSize(text, font, scale, max(1, int(scale * 2)))
    x = int(rng.uniform(0.03, 0.2) * width) if rng.random() < 0.5 else max(0, width - text_w - int(0.05 * width))
    y = int(rng.uniform(0.05, 0.2) * height) + text_h
    cv2.putText(film, text, (x, y), font, scale, 255, max(1, int(scale * 2)), cv2.LINE_AA)
    thickness = max(2, int(round(rng.uniform(*STRIP_FRACTION) * height)))
    level = rng.uniform(0, 25) if rng.random() < 0.5 else rng.uniform(230, 255)
    edge = str(rng.choice(["top", "bottom", "left", "right"]))
    vertical = edge in ("top", "bottom")
    shape = (thickness, width) if vertical else (height, thickness)
    strip = np.clip(rng.normal(level, 2.0, shape), 0, 255).astype(np.uint8)
    if edge == "top":
        return np.vstack([strip, film]), (0, 0, thickness, width)
    if edge == "bottom":
        return np.vstack([film, strip]), (height, 0, height + thickness, width)
    if edge == "left":
        return np.hstack([strip, film]), (0, 0, height, thickness)
    return np.hstack([film, strip]), (0, width, height, width + thickness)


def peak_in_film(raw: np.ndarray, box) -> tuple[float, float] | None:
    """Where a map's brightest point lies in the film's pixels (row, column); None for a blank map."""
    from cxr_core.modelling.evidence import upsampled

    if raw is None or float(raw.max()) <= 0:
        return None
    side = 8 * raw.shape[0]
    heat = upsampled(raw, side)
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return (box.top + (row + 0.5) / side * (box.bottom - box.top),
            box.left + (col + 0.5) / side * (box.right - box.left))  # fmt: skip


# Framing perturbations a new hospital brings: TB films cropped to a wide strip (the middle 60 % of the
# rows), normal films padded with black bars to a 4:3 landscape frame.
CROP_ROWS_KEPT = 0.6
PAD_ASPECT = 4 / 3


def crop_wide(gray: np.ndarray) -> np.ndarray:
    height = gray.shape[0]
    keep = max(1, round(height * CROP_ROWS_KEPT))
    top = (height - keep) // 2
    return gray[top : top + keep]


def pad_bars(gray: np.ndarray) -> np.ndarray:
    height, width = gray.shape
    target = max(width, round(height * PAD_ASPECT))
    left = (target - width) // 2
    canvas = np.zeros((height, target), np.uint8)
    canvas[:, left : left + width] = gray
    return canvas


def softer_and_sharper(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The network's input blurred (a softer detector) and edge-enhanced (a vendor's unsharp mask)."""
    blur = cv2.GaussianBlur(pixels, (0, 0), BLUR_SIGMA)
    detail = cv2.GaussianBlur(pixels, (0, 0), UNSHARP_SIGMA)
    return {"blur": blur, "unsharp": cv2.addWeighted(pixels, 1.0 + UNSHARP_AMOUNT, detail, -UNSHARP_AMOUNT, 0)}


def upscaled(gray: np.ndarray) -> np.ndarray:
    """The film at :data:`UPSCALE_SIDE` px on its long side (bicubic), aspect ratio kept."""
    height, width = gray.shape
    scale = UPSCALE_SIDE / max(height, width)
    return cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_CUBIC)


def probability_changes(before, after, sources) -> dict:
    """Per source and over all films: median |dp|, share beyond the tolerance, median signed dp.

    A signed median far from zero is a bias (sharper films called TB), not noise.
    """
    dp = np.asarray(after, np.float64) - np.asarray(before, np.float64)
    sources = np.asarray(sources)

    def summary(mask) -> dict:
        return {
            "films": int(mask.sum()),
            "median_abs": round(float(np.median(np.abs(dp[mask]))), 4),
            "over_tolerance": round(float(np.mean(np.abs(dp[mask]) > ACQUISITION_TOLERANCE)), 4),
            "median_signed": round(float(np.median(dp[mask])), 4),
        }

    if not len(dp):
        return {"all": {"films": 0}}
    table = {source: summary(sources == source) for source in sorted(set(sources.tolist()))}
    table["all"] = summary(np.ones(len(dp), bool))
    return table


def acquisition_of_inputs(images: np.ndarray, predictor, probabilities, rows) -> dict:
    """Blur and unsharp mask of every test film's own input (``(n, side, side, 1)`` as scored): two more
    batched passes, no file read."""
    variants = [softer_and_sharper(image[..., 0]) for image in images]
    sources = [row["source"] for row in rows]
    found = {}
    for name in ("blur", "unsharp"):
        scored = predictor.predict(np.stack([v[name] for v in variants])[..., None])
        found[name] = probability_changes(probabilities, [p.probability for p in scored], sources)
    return found


def reread_test_films(rows: list[dict], labels, probabilities, predictions, predictor) -> dict:
    """What only the original films can tell: framing, strips and markers, the film's band, resolution.

    Framing: TB films cropped wide and normals padded with bars go through the same path as any film;
    a decision that changes was taken on the framing (target: at most 5 % flip). Film band: the share
    of each TB film's Grad-CAM mass in the film's own outer band (the crop box recorded at ingest lays
    the map onto the film; inside the lungs is measured from the ingest's masks, ``evidence_where``). Upscale: the
    film at 3,000 px through the whole path (lung model, crop), as a modern detector's image arrives.
    """
    from cxr_core.errors import CxrError, ImageError
    from cxr_core.imaging.decode import read_image
    from cxr_core.imaging.preprocess import CropBox
    from cxr_core.modelling.evidence import outer_band_share_in_film
    from cxr_core.pipeline.datasets import Record, read_record_bytes

    perturbed, before, band_shares, refused, unreadable = [], [], {}, 0, 0
    striped, strip_boxes, strip_before, strip_refused = [], [], [], 0
    unlike, unlike_before, unlike_refused = [], [], 0  # strips with markers training never drew
    upscaled_inputs, upscaled_before, upscaled_sources = [], [], []
    for index, (row, label, probability, prediction) in enumerate(
        zip(rows, labels, probabilities, predictions, strict=True)
    ):
        record = Record(row["path"], int(label), row["source"], row.get("member") or None)
        try:
            image = read_image(read_record_bytes(record))
        except (CxrError, OSError):
            unreadable += 1  # moved or changed since ingest: counted, so the gate sees how much was measured
            continue
        try:
            try:
                changed, strip_box = add_strip_and_marker(image.pixels, seed=index)
                striped.append(predictor.model_input_from_image(image.with_pixels(changed)))
                strip_boxes.append(strip_box)
                strip_before.append(probability >= predictor.threshold)
            except ImageError:
                strip_refused += 1
            try:
                changed, _ = add_strip_and_marker(image.pixels, seed=index, held_out=True)
                unlike.append(predictor.model_input_from_image(image.with_pixels(changed)).pixels)
                unlike_before.append(probability >= predictor.threshold)
            except ImageError:
                unlike_refused += 1
            try:
                large = upscaled(image.pixels)
                upscaled_inputs.append(predictor.model_input_from_image(image.with_pixels(large)).pixels)
                upscaled_before.append(probability)
                upscaled_sources.append(row["source"])
            except ImageError:
                pass  # refused once upscaled: counted by the films figure, which then falls short
            if label == 1 and prediction.raw_heatmap is not None and row.get("box_top", "") != "":
                box = CropBox(*(int(row[key]) for key in ("box_top", "box_left", "box_bottom", "box_right")))
                band_shares.setdefault(row["source"], []).append(
                    outer_band_share_in_film(prediction.raw_heatmap, box, image.pixels.shape)
                )
            changed = crop_wide(image.pixels) if label == 1 else pad_bars(image.pixels)
            perturbed.append(predictor.model_input_from_image(image.with_pixels(changed)).pixels)
        except ImageError:
            refused += 1  # no plausible lungs once reframed: not scored (a clinician reads it), counted apart
            continue
        except (CxrError, OSError):
            unreadable += 1
            continue
        before.append(probability >= predictor.threshold)
    # Counts are written even when nothing could be scored, so a gate reads "all refused" as such.
    framing = {"films": len(before), "flipped": 0, "share": None, "refused_after_reframing": refused,
               "unreadable": unreadable, "tb_crop_rows_kept": CROP_ROWS_KEPT,
               "normal_pad_aspect": round(PAD_ASPECT, 4)}  # fmt: skip
    if perturbed:
        flipped, _ = _decisions_changed(predictor, perturbed, before)
        framing.update(flipped=flipped, share=round(flipped / len(before), 4))
    strips = {"films": len(striped), "flipped": 0, "flipped_share": None, "peak_on_strip": 0,
              "maps_with_peak": 0, "peak_on_strip_share": None, "refused_after_change": strip_refused,
              "unreadable": unreadable, "strip_fraction_of_height": list(STRIP_FRACTION),
              "markers": list(MARKERS)}  # fmt: skip
    if striped:
        flipped, scored = _decisions_changed(predictor, [m.pixels for m in striped], strip_before)
        on_strip, with_peak = 0, 0
        for prepared, strip_box, prediction in zip(striped, strip_boxes, scored, strict=True):
            peak = peak_in_film(prediction.raw_heatmap, prepared.box)
            if peak is not None:  # a blank map points nowhere: it is not counted as "not on the strip"
                with_peak += 1
                on_strip += int(strip_box[0] <= peak[0] < strip_box[2] and strip_box[1] <= peak[1] < strip_box[3])
        strips.update(flipped=flipped, flipped_share=round(flipped / len(striped), 4), peak_on_strip=on_strip,
                      maps_with_peak=with_peak,
                      peak_on_strip_share=round(on_strip / with_peak, 4) if with_peak else None)  # fmt: skip
    held_out = {"films": len(unlike), "flipped": 0, "flipped_share": None, "refused_after_change": unlike_refused,
                "unreadable": unreadable, "markers": list(HELD_OUT_MARKERS), "fonts": list(HELD_OUT_FONTS)}  # fmt: skip
    if unlike:
        flipped, _ = _decisions_changed(predictor, unlike, unlike_before)
        held_out.update(flipped=flipped, flipped_share=round(flipped / len(unlike), 4))
    upscale = probability_changes([], [], [])
    if upscaled_inputs:
        scored = predictor.predict(np.stack(upscaled_inputs)[..., None])
        upscale = probability_changes(upscaled_before, [p.probability for p in scored], upscaled_sources)
    return {"framing": framing, "film_band_shares": band_shares, "strips": strips,
            "held_out_markers": held_out, "upscale": upscale}  # fmt: skip


def _decisions_changed(predictor, inputs: list[np.ndarray], before: list[bool]) -> tuple[int, list]:
    """Score changed inputs in one batch: how many decisions differ from ``before``, and the predictions."""
    scored = predictor.predict(np.stack(inputs)[..., None])
    return int(sum((p.probability >= predictor.threshold) != b for p, b in zip(scored, before, strict=True))), scored


def dataset_root(data_path: str | Path) -> Path:
    """The folder image paths are recorded against: the dataset folder, or the folder of its CSV or zip."""
    path = Path(data_path)
    return path if path.is_dir() else path.parent


def portable_path(path: str, data_root: Path) -> str:
    """A test image's path relative to its dataset, so the record still points at it on another machine.

    Readers join it with wherever that dataset lives there (the model's ``data_path``, a test's copy).
    """
    try:
        return Path(path).relative_to(data_root).as_posix()
    except ValueError:
        return path


def score_films_through_own_path(ingest_dir: str | Path, predictor, split: str = "test"):
    """Labels and probabilities of a split's films read again from disk through ``predictor``'s own path.

    For comparing a model whose preprocessing differs from the ingest's (a whole-film model against
    lung-cropped shards): each model must see the films the way it was trained to. Films the model
    refuses (no plausible lungs, unreadable since) are left out of both lists.
    """
    from cxr_core.errors import CxrError
    from cxr_core.pipeline.datasets import Record, read_record_bytes

    _, labels, rows = load_split(ingest_dir, split)
    kept_labels, pixels = [], []
    for row, label in zip(rows, labels, strict=True):
        record = Record(row["path"], int(label), row["source"], row.get("member") or None)
        try:
            pixels.append(predictor.model_input(read_record_bytes(record)).pixels)
        except (CxrError, OSError):
            continue
        kept_labels.append(int(label))
    if not pixels:
        return np.array([], np.int32), np.array([], np.float64)
    predictions = predictor.predict(np.stack(pixels)[..., None])
    return np.array(kept_labels, np.int32), np.array([p.probability for p in predictions], np.float64)


def same_preprocessing(predictor, ingest_dir: str | Path) -> bool:
    """Whether ``predictor`` was trained on inputs made the way this ingest made its shards."""
    summary = json.loads((Path(ingest_dir) / Layout.SUMMARY).read_text())
    return predictor.side == summary.get("side") and _input_recipe(predictor.preprocessing) == _input_recipe(
        summary.get("preprocessing")
    )


def _input_recipe(preprocessing: dict | None) -> tuple:
    """What decides the pixels a network sees: whole film, or the lungs' box (masked or not) by one lung model."""
    preprocessing = preprocessing or {}
    if not preprocessing.get("lung_crop"):
        return ("whole film",)
    return (
        "lung box",
        preprocessing.get("lung_margin"),
        bool(preprocessing.get("lung_mask")),
        (preprocessing.get("lung_model") or {}).get("sha256"),
    )


def score_split(ingest_dir: str | Path, predictor, split: str = "test"):
    """Labels, probabilities, manifest rows, predictions and images of one split's shards, scored by ``predictor``.

    Also used to score the *current* model on a candidate's test split, so the quality gate compares
    two models on the same images rather than each on its own test set.
    """
    from cxr_core.errors import DatasetError

    images, labels, rows = load_split(ingest_dir, split)
    if len(labels) == 0:
        raise DatasetError(f"the {split} split is empty; ingest a larger dataset")
    predictions = predictor.predict(images)
    probabilities = np.array([p.probability for p in predictions], dtype=np.float64)
    return labels, probabilities, rows, predictions, images
