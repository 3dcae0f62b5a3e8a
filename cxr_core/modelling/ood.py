"""Does an image resemble the chest X-rays the model learned from? A distance in its own feature space.

Cheap checks (colour, flatness, size) in :mod:`cxr_core.imaging.decode` catch obvious non-radiographs; a grayscale
snapshot of something else passes them. Its embedding, though, lands far from the training images'.
We model the training embeddings as one Gaussian (Ledoit-Wolf shrinkage keeps the covariance usable
with a few hundred images) and use the Mahalanobis distance. The alarm level is a high percentile of
the training distances times a margin, so real radiographs from other hospitals are not refused; the
result is a warning, never a silent score.
"""

from pathlib import Path

import numpy as np

ALARM_PERCENTILE = 99.0
ALARM_MARGIN = 1.5


def fit(embeddings: np.ndarray) -> dict[str, np.ndarray]:
    """Fit the reference distribution on training-image embeddings (n, d)."""
    from sklearn.covariance import LedoitWolf

    embeddings = np.asarray(embeddings, dtype=np.float64)
    estimator = LedoitWolf().fit(embeddings)
    stats = {"mean": estimator.location_, "precision": estimator.precision_}
    distances = distance(stats, embeddings)
    stats["alarm"] = np.array(np.percentile(distances, ALARM_PERCENTILE) * ALARM_MARGIN)
    return stats


def distance(stats: dict[str, np.ndarray], embeddings: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each embedding from the training distribution."""
    centred = np.asarray(embeddings, dtype=np.float64) - stats["mean"]
    squared = np.einsum("ij,jk,ik->i", centred, stats["precision"], centred)
    return np.sqrt(np.maximum(squared, 0.0))


def save(stats: dict[str, np.ndarray], path: str | Path) -> None:
    np.savez(path, **stats)


def load(path: str | Path) -> dict[str, np.ndarray] | None:
    """The saved statistics, or None for a model version trained without them."""
    path = Path(path)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
