"""Contact sheet of Grad-CAM overlays: a network on films of a source it did not train on.

For looking, not measuring: ``python scripts/overlays.py MODEL.keras --source da --out sheet.png`` draws
the held-out source's films (TB first, then normals) as the Screen page would (heatmap in probability
units over the lungs' box) with the lung model's outline in green and the radiologists' lesion boxes in
white where the dataset has them. Use a LOSO fold's network (``loso --save-models``) so the films are
truly unseen.
"""

import argparse
import csv
import os
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .keras network (e.g. work/runs/RECIPE/models/loso-da-s0.keras)")
    parser.add_argument("--data", default="../shared/data/cxr", help="folder with manifest.csv (and lesions.csv)")
    parser.add_argument("--source", required=True)
    parser.add_argument("--tb", type=int, default=6)
    parser.add_argument("--normal", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="work/overlays.png")
    args = parser.parse_args()

    from cxr_core.imaging.decode import read_image
    from cxr_core.imaging.preprocess import model_input_from_image
    from cxr_core.modelling.gradcam import GradCam, overlay
    from cxr_core.modelling.lungs import load_lung_model
    from cxr_core.modelling.networks import load_model

    data = Path(args.data)
    with open(data / "manifest.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["source"] == args.source]
    boxes: dict[str, list] = {}
    if (data / "lesions.csv").exists():
        with open(data / "lesions.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                boxes.setdefault(row["path"], []).append([int(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")])
    rng = np.random.default_rng(args.seed)
    tb = [r for r in rows if r["label"] == "Tuberculosis"]
    normal = [r for r in rows if r["label"] == "Normal"]
    picked = [tb[i] for i in rng.permutation(len(tb))[: args.tb]] + [normal[i] for i in rng.permutation(len(normal))[: args.normal]]
    model = load_model(args.model)
    cam = GradCam(model)
    lungs = load_lung_model()
    tiles = []
    for row in picked:
        image = read_image(data / row["path"])
        prepared = model_input_from_image(image, cam.side, lungs=lungs, crop_to_lungs=True)
        scored = cam(prepared.pixels[None, ..., None])
        tile = overlay(image.pixels, scored.heatmaps[0], prepared.box, alpha=0.6, max_side=384)
        scale = tile.shape[0] / image.pixels.shape[0]
        contours, _ = cv2.findContours(
            cv2.resize(prepared.lungs["mask"], (tile.shape[1], tile.shape[0])), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(tile, contours, -1, (0, 255, 0), 1)
        for x0, y0, x1, y1 in boxes.get(row["path"], []):
            cv2.rectangle(tile, (int(x0 * scale), int(y0 * scale)), (int(x1 * scale), int(y1 * scale)), (255, 255, 255), 2)
        tile = cv2.resize(tile, (384, 384))
        label = f"{'TB' if row['label'] == 'Tuberculosis' else 'N'} p={scored.probabilities[0]:.2f} {os.path.basename(row['path'])[:18]}"
        cv2.putText(tile, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    while len(tiles) % 5:
        tiles.append(np.zeros_like(tiles[0]))
    sheet = np.vstack([np.hstack(tiles[i : i + 5]) for i in range(0, len(tiles), 5)])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.out, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} ({len(picked)} films of {args.source})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
