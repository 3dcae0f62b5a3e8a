"""Local validation: the model in use scored on a clinic's own confirmed films, beside its model card.

The clinic's set comes in any layout the pipeline reads (Kaggle folders, NLM names, a CSV manifest, a
.zip), from inside the configured dataset roots. Every film goes through the serving path
(:meth:`Predictor.model_input`: the lung check and lung box the model was trained with, then the
:class:`Predictor`), so what is measured is what the clinic will get.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_core import metrics
from cxr_core.errors import CxrError, DatasetError


def score_local_set(data_path: str | Path, predictor, batch: int = 64) -> dict:
    """Labels, raw scores, paths and pixel fingerprints of every readable film; unreadable ones are listed,
    never fatal."""
    from cxr_core.pipeline.datasets import discover, read_record_bytes
    from cxr_core.registry.sites import film_fingerprint

    found = discover(data_path)
    if not found.records:
        raise DatasetError(f"no labelled films found in {Path(data_path).name}")
    labels, scores, paths, skipped, fingerprints = [], [], [], list(found.skipped), []
    pending: list[tuple] = []

    def flush() -> None:
        if not pending:
            return
        predictions = predictor.predict(np.stack([item[2] for item in pending])[..., None])
        for (record, label, pixels), prediction in zip(pending, predictions, strict=True):
            fingerprints.append(film_fingerprint(pixels))
            labels.append(label)
            scores.append(prediction.probability)
            paths.append(record.display_path)
        pending.clear()

    for record in found.records:
        try:
            pixels = predictor.model_input(read_record_bytes(record)).pixels
        except (CxrError, OSError) as error:
            skipped.append((record.display_path, str(error)))
            continue
        pending.append((record, int(record.label), pixels))
        if len(pending) >= batch:
            flush()
    flush()
    return {
        "labels": np.asarray(labels, dtype=np.int64),
        "scores": np.asarray(scores, dtype=np.float64),
        "paths": paths,
        "fingerprints": fingerprints,  # of the network's input, to mark these films when screened later
        "skipped": skipped,
        "sources": sorted({record.source for record in found.records}),
    }


def local_report(
    labels: np.ndarray, scores: np.ndarray, threshold: float, card: dict | None, n_boot=1000
) -> dict:
    """ROC-AUC with CI, calibration, the confusion matrix at the current threshold, beside the card."""
    report = metrics.evaluate(labels, scores, threshold, n_boot=n_boot)
    report["calibration_curve"] = metrics.curves(labels, scores, threshold)["calibration"]
    card_auc = (card or {}).get("roc_auc")
    high = (report.get("roc_auc_ci") or [None, None])[1]
    report["model_card_roc_auc"] = card_auc
    report["below_card"] = bool(card_auc is not None and high is not None and high < card_auc)
    if report["below_card"]:
        report["warning"] = (
            f"The local ROC-AUC ({report['roc_auc']:.3f}, 95% CI up to {high:.3f}) lies below the model card's "
            f"{card_auc:.3f}: the model does worse on this clinic's films than where it was developed."
        )
    return report
