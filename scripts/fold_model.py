"""A LOSO fold's network as a model folder the serving path loads, for checks on the hospital it never saw.

    python scripts/fold_model.py work/runs/RUN --holdout shenzhen --seed 0 --like models/VERSION --out work/fold

``loso --save-models`` keeps each fold's network (``models/loso-HOLDOUT-sSEED.keras``) and ``loso.json`` its
threshold (chosen on the other hospitals' validation films). This writes ``model.keras`` beside a
``metadata.json`` copied from the version whose recipe the fold ran (``--like``: preprocessing, lung
model), with the fold's own threshold and checksum, so ``python -m cxr_core check-unseen --model FOLDER``
scores the held-out hospital through the same path a clinic's films take. Not for the registry: it is
never registered, and its name says it is a fold.
"""

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path


def _flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings as dotted keys (``augment.zoom_in``), so each one is compared on its own."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a loso --save-models output folder (loso.json, models/)")
    parser.add_argument("--holdout", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--like", type=Path, required=True, help="the model version whose recipe the fold ran")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    network = args.run / "models" / f"loso-{args.holdout}-s{args.seed}.keras"
    loso = json.loads((args.run / "loso.json").read_text())
    fold = [r for r in loso["runs"] if r["kind"] == "loso" and r["holdout"] == args.holdout and r["seed"] == args.seed]
    if not network.is_file() or len(fold) != 1:
        print(f"no fold network or record for {args.holdout} seed {args.seed} in {args.run}", file=sys.stderr)
        return 2
    metadata = json.loads((args.like / "metadata.json").read_text())
    fold_settings, template_settings = _flat(loso["params"]), _flat(metadata.get("params") or {})
    differs = sorted(  # settings added to the code since one of the two ran are missing there: not compared
        key for key in set(fold_settings) & set(template_settings)
        if key != "seed" and fold_settings[key] != template_settings[key]
    )  # fmt: skip
    if differs:  # the fold would be scored on another recipe's input or described by another's settings
        print(f"the fold's training settings differ from {args.like.name}'s: {', '.join(differs)}", file=sys.stderr)
        return 2
    keep = ("architecture", "data_name", "data_path", "data_layout", "input_side", "parameters", "params", "preprocessing")
    metadata = {key: metadata[key] for key in keep if key in metadata}  # nothing of the template's own run
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(network, args.out / "model.keras")
    metadata.update(
        version=f"fold-without-{args.holdout}-s{args.seed}",
        model_sha256=hashlib.sha256((args.out / "model.keras").read_bytes()).hexdigest(),
        threshold=fold[0]["threshold"],
        threshold_rule=f"the LOSO fold's own: chosen on the validation films of the sources other than {args.holdout}",
        fold={"run": str(args.run), "holdout": args.holdout, "seed": args.seed, "recipe_of": args.like.name},
    )
    (args.out / "metadata.json").write_text(json.dumps(metadata, indent=2))
    print(f"{args.out}: {metadata['version']}, threshold {metadata['threshold']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
