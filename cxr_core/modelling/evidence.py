"""Where a heatmap's evidence lies: in the frame's outer band (framing, the hospital) or in the lungs.

Kept free of TensorFlow: the dashboard, the evaluation and the tests read these shares from heatmaps
that were already computed.
"""

import cv2
import numpy as np


def outer_band_share(raw: np.ndarray, band: float = 0.125) -> float:
    """Share of a heatmap's mass in the outer band of the frame (``band`` of each side).

    Evidence there is framing, collimation, markers and chest wall: the hospital, not the lungs.
    """
    height, width = raw.shape
    dy, dx = max(1, round(height * band)), max(1, round(width * band))
    total = float(raw.sum())
    if total <= 0:
        return 0.0
    inner = float(raw[dy : height - dy, dx : width - dx].sum())
    return (total - inner) / total


def share_inside(raw: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of a heatmap's mass inside a binary mask of the model's input frame (lungs)."""
    if raw.sum() <= 0:
        return None
    heat = cv2.resize(raw.astype(np.float32), (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = np.maximum(heat, 0)
    total = float(heat.sum())
    return float(heat[mask > 0].sum()) / total if total > 0 else None
