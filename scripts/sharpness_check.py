"""Does a network's probability follow the film's sharpness? Upscale, blur and edge-enhance the same films.

Hospitals differ most in detector resolution and in the vendor's edge enhancement; a network that
reads sharpness as disease moves its probability with the hospital, not the patient. For each network
and films of one source (use a LOSO fold's network on its held-out source: unseen films), this prints
the change of probability when

- ``upscale3000``: the film is given at 3,000 px on its long side (cubic), as a modern detector would;
- ``blur``: the network's input is blurred (Gaussian, sigma 0.7 px of the 128-px input);
- ``unsharp``: the network's input is edge-enhanced (unsharp mask, amount 0.5, sigma 1 px);

as the median |dp|, the share of films with |dp| > 0.05 (the format-parity tolerance) and the median
signed dp (a sign that is the same on most films is a bias, not noise).

    python scripts/sharpness_check.py work/runs/sharp/models/loso-da-s0.keras --source da
    python scripts/sharpness_check.py models/v20261202-065311/model.keras --source shenzhen tbx11k
"""

import argparse
import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHANGES = ("upscale3000", "blur", "unsharp")


def films_of(data: Path, source: str, count: int) -> list[dict]:
    """The first ``count`` films of a source in content-hash order: the same films for every network."""
    with open(data / "manifest.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["source"] == source]
    return sorted(rows, key=lambda row: row["md5"])[:count]


def variants_of(image, cam_side: int, lungs) -> list[np.ndarray]:
    """The network's input for the film as it is, upscaled, blurred and edge-enhanced (evaluate's changes)."""
    from cxr_core.imaging.preprocess import model_input_from_image
    from cxr_core.pipeline.evaluate import softer_and_sharper, upscaled

    original = model_input_from_image(image, cam_side, lungs=lungs, crop_to_lungs=True).pixels
    large = upscaled(image.pixels)
    moved = replace(image, pixels=large, height=large.shape[0], width=large.shape[1])
    upscale = model_input_from_image(moved, cam_side, lungs=lungs, crop_to_lungs=True).pixels
    softer = softer_and_sharper(original)
    return [original, upscale, softer["blur"], softer["unsharp"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help=".keras networks")
    parser.add_argument("--data", default="../shared/data/cxr", help="folder with manifest.csv")
    parser.add_argument("--source", nargs="+", required=True)
    parser.add_argument("--count", type=int, default=40, help="films per source")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    from cxr_core.imaging.decode import read_image
    from cxr_core.modelling.gradcam import GradCam
    from cxr_core.modelling.lungs import load_lung_model
    from cxr_core.modelling.networks import load_model
    from cxr_core.pipeline.evaluate import ACQUISITION_TOLERANCE, probability_changes

    lungs = load_lung_model()
    data = Path(args.data)
    report = []
    for model_path in args.models:
        cam = GradCam(load_model(model_path))
        for source in args.source:
            stacks = [
                variants_of(read_image(data / row["path"]), cam.side, lungs)
                for row in films_of(data, source, args.count)
            ]
            batch = np.stack([pixels for stack in stacks for pixels in stack])[..., None]
            probabilities = np.asarray(cam(batch).probabilities, dtype=float).reshape(len(stacks), 4)
            row = {"model": model_path, "source": source, "films": len(stacks)}
            for column, name in enumerate(CHANGES, start=1):
                row[name] = probability_changes(
                    probabilities[:, 0], probabilities[:, column], [source] * len(stacks)
                )["all"]
            report.append(row)
            print(
                f"{model_path}  {source:9s} n={len(stacks)}  "
                + "  ".join(
                    f"{name}: |dp| {row[name]['median_abs']:.3f}, >{ACQUISITION_TOLERANCE} {row[name]['over_tolerance']:.0%}, "
                    f"dp {row[name]['median_signed']:+.3f}"
                    for name in CHANGES
                ),
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
