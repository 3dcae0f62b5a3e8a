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


def upsampled(raw: np.ndarray, side: int) -> np.ndarray:
    """A coarse map brought to the network's input size (bilinear), never negative."""
    return np.maximum(cv2.resize(raw.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR), 0)


def film_evidence(raw: np.ndarray, lungs: np.ndarray | None, lesions: np.ndarray | None = None) -> dict:
    """Where one film's map lies, in the network's frame (all masks ``side x side``, non-zero = inside).

    ``lung_share``: share of the map's mass inside the (grown) lung fields; ``peak_in_lungs``: whether
    its brightest point is inside them. With lesion boxes: ``lesion_share`` against ``uniform_share``
    (the boxes' share of the frame: what a map spread evenly would score) and ``pointing`` (the peak
    on a box, the pointing game). A map with no mass has no location: its figures are None.
    """
    side = (lungs if lungs is not None else lesions).shape[0]
    heat = upsampled(raw, side)
    total = float(heat.sum())
    result: dict = {"lung_share": None, "peak_in_lungs": None}
    if total <= 0:
        if lesions is not None and lesions.any():
            result.update(lesion_share=None, uniform_share=float((lesions > 0).mean()), pointing=None)
        return result
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    if lungs is not None and lungs.any():
        inside = lungs > 0
        result["lung_share"] = float(heat[inside].sum()) / total
        result["peak_in_lungs"] = bool(inside[peak])
    if lesions is not None and lesions.any():
        boxed = lesions > 0
        result["lesion_share"] = float(heat[boxed].sum()) / total
        result["uniform_share"] = float(boxed.mean())
        result["pointing"] = bool(boxed[peak])
    return result


def summarise_evidence(per_film: list[dict]) -> dict | None:
    """Means over films of :func:`film_evidence` figures (None values left out), with counts."""
    if not per_film:
        return None
    summary: dict = {"films": len(per_film)}
    for key in ("lung_share", "peak_in_lungs", "lesion_share", "uniform_share", "pointing", "outer_band"):
        values = [float(film[key]) for film in per_film if film.get(key) is not None]
        if values:
            summary[key] = round(float(np.mean(values)), 4)
            summary[key + "_n"] = len(values)
    if "lesion_share" in summary and summary.get("uniform_share"):
        summary["lesion_vs_uniform"] = round(summary["lesion_share"] / summary["uniform_share"], 3)
    return summary


LUNG_GROWTH = 0.05  # of the film's longer side: hila, pleura and apices count as lung


def lungs_in_view(mask_region: np.ndarray, film_longer_side: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The lung fields inside the network's view at ``side`` px, as found and grown (both uint8 0/255).

    ``mask_region`` is the lung mask cut to the view's box. Growing by ``LUNG_GROWTH`` of the *film's*
    longer side (scaled into the view) is the tolerance every evidence figure uses, in training targets,
    in evaluation and on the Screen page alike.
    """
    lungs = np.zeros((side, side), np.uint8)
    if mask_region is None or mask_region.size == 0:
        return lungs, lungs.copy()
    lungs = (cv2.resize(mask_region, (side, side), interpolation=cv2.INTER_AREA) >= 128).astype(np.uint8) * 255
    radius = max(1, int(round(LUNG_GROWTH * film_longer_side * side / max(1, mask_region.shape[0]))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return lungs, cv2.dilate(lungs, kernel)
