"""Stage 1 (``dvc repro ingest``): dataset -> uint8 shards, manifest with duplicate-aware seeded splits."""

import argparse
import json

from cxr_core.config import load_params, resolve_data_path
from cxr_core.ingest import run_ingest


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default=None, help="params file (default: params.yaml)")
    parser.add_argument("--data", default=None, help="dataset path (default: data.path in params)")
    parser.add_argument("--out", default="work/ingest")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    data = resolve_data_path(args.data or params["data"]["path"])
    summary = run_ingest(data, args.out, params.get("ingest"))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
