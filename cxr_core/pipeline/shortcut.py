"""The shortcut audit: how much of a figure a classifier gets without looking at any pathology.

A 16x16 thumbnail of the whole film plus five global intensity statistics (mean, spread, 5th, 50th
and 95th percentiles) carry the hospital's framing and exposure and almost nothing of the lungs'
texture. A cross-cohort study of public TB sets found such features reach AUC 0.98 on some of them.
A scikit-learn logistic regression on them, trained on exactly the split the network trained on,
stands beside every network figure: where it comes close, the figure says more about the data than
about the network's sight.
"""

import numpy as np

SHORTCUT_NAME = "thumbnail 16x16 + 5 intensity statistics, logistic regression"


def fit_shortcut(features: np.ndarray, labels: np.ndarray, seed: int = 0):
    """A standardised, L2-regularised logistic regression (class-balanced) on the audit features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=0.1, max_iter=5000, class_weight="balanced", random_state=seed),
    )
    return model.fit(features, labels)


def shortcut_scores(model, features: np.ndarray) -> np.ndarray:
    """Probability of TB from the audit features alone."""
    if len(features) == 0:
        return np.empty(0, np.float64)
    return model.predict_proba(features)[:, 1]


def auc_or_none(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC-AUC, or None where a test set has one class only."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return None
    return round(float(roc_auc_score(labels, scores)), 4)
