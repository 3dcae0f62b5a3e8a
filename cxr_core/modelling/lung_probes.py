"""Pictures with no lungs in them that the lung check must refuse, whatever lung model serves.

Four of what a screening desk is handed by mistake (a gradient, a noise field, a page of text, a
blurred photo-like picture) and five of kinds that ``lungs.negatives``' training families never draw (a
checkerboard, rings, a radial vignette, fine diagonal stripes, sparse dots), so that refusing them is
not only what a network was shown. Fixed and seeded: every lung model is held to the same pictures by
the tests and by the lung gate (a candidate that finds lungs in any of them is not promoted).
"""

from __future__ import annotations

import cv2
import numpy as np


def non_chest_pictures() -> dict[str, np.ndarray]:
    """Name -> 2-D uint8 picture: the four mistakes, then the five unseen kinds."""
    rng = np.random.default_rng(7)
    ramp = np.tile(np.linspace(0, 255, 512, dtype=np.float32), (512, 1)).astype(np.uint8)
    noise = np.clip(128 + rng.normal(0, 40, (512, 512)), 0, 255).astype(np.uint8)
    page = np.full((700, 500), 235, np.uint8)
    for line in range(24):
        cv2.putText(page, "Lorem ipsum dolor sit amet, consectetur", (20, 40 + 26 * line),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.55, 20, 1)  # fmt: skip
    blobs = cv2.GaussianBlur(rng.integers(0, 255, (480, 640)).astype(np.uint8), (0, 0), 25)
    photo = cv2.normalize(blobs, None, 0, 255, cv2.NORM_MINMAX)
    yy, xx = np.mgrid[0:512, 0:512].astype(np.float32)
    radius = np.hypot(xx - 256, yy - 256)
    dots = np.full((512, 512), 30, np.uint8)
    dots[np.random.default_rng(11).random((512, 512)) < 0.02] = 230
    return {
        "gradient": ramp,
        "noise": noise,
        "text page": page,
        "photo": photo,
        "checkerboard": ((((xx // 32) + (yy // 32)) % 2) * 200 + 20).astype(np.uint8),
        "rings": (127 + 100 * np.cos(radius / 12)).astype(np.uint8),
        "vignette": np.clip(255 - radius, 0, 255).astype(np.uint8),
        "stripes": (127 + 100 * np.sign(np.cos((xx + yy) / 6))).astype(np.uint8),
        "sparse dots": dots,
    }
