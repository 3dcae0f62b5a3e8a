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
    params = settings.section("evaluate", params)
    y_test, probabilities, rows, predictor = score_split(ingest_dir, model_dir, "test")
    threshold = predictor.threshold
    report = metrics.evaluate(
        y_test,
        probabilities,
        threshold,
        sources=[row["source"] for row in rows],
        n_boot=int(params["n_boot"]),
        seed=int(params["seed"]),
    )
    at_half = metrics.operating_point(y_test, probabilities, 0.5)
    report["at_fixed_0_5"] = {
        "accuracy": at_half["accuracy"],
        "tb_recall": at_half["sensitivity"],
        "tb_precision": at_half["ppv"],
    }
    report["original_system"] = ORIGINAL_SYSTEM
    report["threshold_rule"] = predictor.metadata.get("threshold_rule")

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


def score_split(ingest_dir: str | Path, model_dir: str | Path, split: str = "test"):
    """Labels, probabilities, manifest rows and the predictor, for one split scored by one model.

    Also used to score the *current* model on a candidate's test split, so the quality gate compares
    two models on the same images rather than each on its own test set.
    """
    from cxr_core.errors import DatasetError
    from cxr_core.modelling.predictor import Predictor

    predictor = Predictor(model_dir)
    images, labels, rows = load_split(ingest_dir, split)
    if len(labels) == 0:
        raise DatasetError(f"the {split} split is empty; ingest a larger dataset")
    probabilities = np.array([p.probability for p in predictor.predict(images)], dtype=np.float64)
    return labels, probabilities, rows, predictor
