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


def outer_band_share_in_film(raw: np.ndarray, box, shape: tuple[int, int], band: float = 0.125) -> float:
    """:func:`outer_band_share` measured on the whole film, the heatmap placed where the network looked.

    For a network that sees only part of the film (the lungs' box) the band of its own input is mostly
    lung; what matters is how much evidence sits near the film's edges, where hospitals put their
    markers and collimation. Computed at a quarter of the film's size: the heatmap is coarse anyway.
    """
    height, width = shape
    scale = 0.25
    small = (max(8, round(height * scale)), max(8, round(width * scale)))
    top, left = round(box.top * scale), round(box.left * scale)
    bottom = max(top + 1, min(small[0], round(box.bottom * scale)))
    right = max(left + 1, min(small[1], round(box.right * scale)))
    canvas = np.zeros(small, np.float32)
    canvas[top:bottom, left:right] = np.maximum(
        cv2.resize(raw.astype(np.float32), (right - left, bottom - top), interpolation=cv2.INTER_LINEAR), 0
    )
    return outer_band_share(canvas, band)
