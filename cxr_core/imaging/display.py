"""Pictures for a person's screen: one display size shared by the film view and the Grad-CAM overlay.

Both are shrunk to the same longest side so a heatmap laid on a film lines up with the film shown
beside it; a browser shows no more than this anyway, and sending full 3000-px frames would only slow
the page down.
"""

import cv2
import numpy as np

DISPLAY_SIDE = 768
VIEWER_SIDE = 2048  # the zoomable viewer keeps films up to this size (most digital chest films are smaller)


def display_scale(height: int, width: int, max_side: int = DISPLAY_SIDE) -> float:
    """The factor (at most 1) that brings the longest side down to ``max_side``."""
    return min(1.0, max_side / max(height, width))


def display_gray(gray: np.ndarray, max_side: int = DISPLAY_SIDE) -> np.ndarray:
    """The original picture shrunk for the screen (area interpolation: no aliasing of fine lines)."""
    height, width = gray.shape[:2]
    scale = display_scale(height, width, max_side)
    if scale >= 1.0:
        return gray
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


def apply_window(gray: np.ndarray, level: float, width: float) -> np.ndarray:
    """Window/level (contrast and brightness) on a uint8 picture: ``level`` is the grey at mid-screen,
    ``width`` the number of greys spread over black..white. ``level=128, width=256`` changes nothing."""
    width = max(2.0, float(width))
    low = float(level) - width / 2.0
    out = (gray.astype(np.float32) - low) * (255.0 / (width - 1.0))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
