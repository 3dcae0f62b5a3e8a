"""Stage 2 (``dvc repro train``): train the CNN on the shards and pick the threshold on validation."""

import argparse
import json

from cxr_core.config import load_params
from cxr_core.train import run_train


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default=None, help="params file (default: params.yaml)")
    parser.add_argument("--ingest", default="work/ingest")
    parser.add_argument("--out", default="work/model")
    args = parser.parse_args(argv)
    metadata = run_train(args.ingest, args.out, load_params(args.params).get("train"))
    print(json.dumps({key: metadata[key] for key in ("threshold", "val_auc", "epochs_run", "train_seconds")}))
    return metadata


if __name__ == "__main__":
    main()
