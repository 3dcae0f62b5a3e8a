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

import numpy as np

from cxr_core import metrics, settings
from cxr_core.fsutil import atomic_directory, write_json_atomic
from cxr_core.pipeline.ingest import load_split
from cxr_core.settings import Layout

ORIGINAL_SYSTEM = {"accuracy": 0.975, "tb_recall": 0.922, "tb_precision": 0.935, "threshold": 0.5}


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
    y_test, probabilities, rows, predictions = score_split(ingest_dir, predictor, "test")
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
    reread = reread_test_films(rows, y_test, probabilities, predictions, predictor)
    report["framing"] = reread["framing"]
    for source, shares in reread["lung_shares"].items():
        report["evidence"].setdefault(source, {"tb_films": len(shares)})["lung_share"] = round(
            float(np.mean(shares)), 4
        )
    every = [share for shares in reread["lung_shares"].values() for share in shares]
    if every and "all" in report["evidence"]:
        report["evidence"]["all"]["lung_share"] = round(float(np.mean(every)), 4)
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


def reread_test_films(rows: list[dict], labels, probabilities, predictions, predictor) -> dict:
    """What only the original films can tell: framing robustness, and evidence inside the lungs.

    Framing: TB films cropped wide and normals padded with bars go through the same path as any film;
    a decision that changes was taken on the framing (target: at most 5 % flip). Lungs: the share of
    each TB film's Grad-CAM mass inside its lung fields, when a lung model is in use.
    """
    from dataclasses import replace

    from cxr_core.errors import CxrError, ImageError
    from cxr_core.imaging.decode import read_image
    from cxr_core.modelling.evidence import outer_band_share_in_film, share_inside
    from cxr_core.pipeline.datasets import Record, read_record_bytes

    perturbed, before, lung_shares, band_shares, refused = [], [], {}, {}, 0
    for row, label, probability, prediction in zip(rows, labels, probabilities, predictions, strict=True):
        record = Record(row["path"], int(label), row["source"], row.get("member") or None)
        try:
            image = read_image(read_record_bytes(record))
            if label == 1 and prediction.raw_heatmap is not None:
                found = predictor.model_input_from_image(image)
                band_shares.setdefault(row["source"], []).append(
                    outer_band_share_in_film(prediction.raw_heatmap, found.box, image.pixels.shape)
                )
                if found.lungs is not None:
                    box = found.box
                    region = found.lungs["mask"][box.top : box.bottom, box.left : box.right]
                    share = share_inside(prediction.raw_heatmap, region)
                    if share is not None:
                        lung_shares.setdefault(row["source"], []).append(share)
            changed = crop_wide(image.pixels) if label == 1 else pad_bars(image.pixels)
            moved = replace(image, pixels=changed, height=changed.shape[0], width=changed.shape[1])
            perturbed.append(predictor.model_input_from_image(moved).pixels)
        except ImageError:
            refused += 1  # no plausible lungs once reframed: not scored (a clinician reads it), counted apart
            continue
        except (CxrError, OSError):
            continue  # moved or changed since ingest: measure what can still be read
        before.append(probability >= predictor.threshold)
    framing = {"films": 0}
    if perturbed:
        after = [
            p.probability >= predictor.threshold for p in predictor.predict(np.stack(perturbed)[..., None])
        ]
        flipped = int(sum(a != b for a, b in zip(after, before, strict=True)))
        framing = {"films": len(before), "flipped": flipped, "share": round(flipped / len(before), 4),
                   "refused_after_reframing": refused,
                   "tb_crop_rows_kept": CROP_ROWS_KEPT, "normal_pad_aspect": round(PAD_ASPECT, 4)}  # fmt: skip
    return {"framing": framing, "lung_shares": lung_shares, "film_band_shares": band_shares}


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
    """Labels, probabilities, manifest rows and predictions of one split's shards, scored by ``predictor``.

    Also used to score the *current* model on a candidate's test split, so the quality gate compares
    two models on the same images rather than each on its own test set.
    """
    from cxr_core.errors import DatasetError

    images, labels, rows = load_split(ingest_dir, split)
    if len(labels) == 0:
        raise DatasetError(f"the {split} split is empty; ingest a larger dataset")
    predictions = predictor.predict(images)
    probabilities = np.array([p.probability for p in predictions], dtype=np.float64)
    return labels, probabilities, rows, predictions
