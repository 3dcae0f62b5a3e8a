"""Stage 3 (``dvc repro evaluate``): test-split metrics, DVC plots and per-image predictions."""

import argparse
import json

from cxr_core.config import load_params
from cxr_core.evaluate import run_evaluate


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default=None, help="params file (default: params.yaml)")
    parser.add_argument("--ingest", default="work/ingest")
    parser.add_argument("--model", default="work/model")
    parser.add_argument("--out", default="work/evaluate")
    args = parser.parse_args(argv)
    report = run_evaluate(args.ingest, args.model, args.out, load_params(args.params).get("evaluate"))
    print(json.dumps({key: report[key] for key in ("roc_auc", "sensitivity", "specificity")}))
    return report


if __name__ == "__main__":
    main()
