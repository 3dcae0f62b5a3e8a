"""Command line: ``python -m cxr_core predict|pipeline|models|job-run``.

``predict`` is the batch scorer: one row per file, a bad file gets ``ok: false`` and its message and
the batch goes on; the exit code is non-zero only when the command itself is misused (no such model,
no input path: 2) or the machine fails it (a full disk, a read-only folder: 1), and then the reason is
one ``error: ...`` line, not a traceback. ``pipeline`` runs ingest >> train >> evaluate and registers
the result; ``models`` lists, registers, promotes and rolls back registry versions.
"""

import argparse
import csv
import json
import sys
from pathlib import Path

from cxr_core.errors import CxrError, os_error_message

PREDICT_FIELDS = ["file", "ok", "probability", "label", "threshold", "model_version", "error", "warning"]


def _predict(args) -> int:
    from cxr_core.inference import Predictor, predict_paths, spreadsheet_safe
    from cxr_core.registry import Registry

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    registry = Registry()
    model_dir, warning = registry.resolve_with_warning(args.model)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    predictor = Predictor(model_dir)
    try:
        out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    except OSError as error:
        print(f"error: cannot write {args.output}: {error.strerror or error}", file=sys.stderr)
        return 2
    try:
        writer = None
        if args.format == "csv":
            writer = csv.DictWriter(out, fieldnames=PREDICT_FIELDS)
            writer.writeheader()
        for row in predict_paths(args.paths, predictor):
            if writer:
                writer.writerow({key: spreadsheet_safe(value) for key, value in row.items()})
            else:
                out.write(json.dumps(row) + "\n")
            out.flush()
    finally:
        if args.output:
            out.close()
    return 0


def _pipeline(args) -> int:
    from cxr_core.config import load_params, resolve_data_path
    from cxr_core.pipeline import run_pipeline

    params = load_params(args.params)
    if args.epochs is not None:
        params.setdefault("train", {})["epochs"] = args.epochs
    data = resolve_data_path(args.data or params["data"]["path"])
    result = run_pipeline(data, args.work, params, promote=args.promote)
    print(json.dumps(result, indent=2))
    return 0


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _models(args) -> int:
    from cxr_core.registry import Registry

    registry = Registry()
    if args.action == "list":
        current = registry.current_version()
        for meta in registry.versions():
            metrics = meta.get("metrics") or {}
            marker = "*" if meta["version"] == current else " "
            print(
                f"{marker} {meta['version']}  created {meta.get('created')}  threshold {_number(meta.get('threshold'))}  "
                f"AUC {metrics.get('roc_auc')}  sens {metrics.get('sensitivity')}  spec {metrics.get('specificity')}"
            )
    elif args.action == "register":
        version = registry.register(args.target)
        if args.promote:
            registry.promote(version)
        print(version)
    elif args.action == "promote":
        registry.promote(args.target)
        print(f"current model: {args.target}")
    elif args.action == "rollback":
        print(f"current model: {registry.rollback()}")
    return 0


def _job_run(args) -> int:
    from cxr_core.jobs import run_job

    return run_job(args.job_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxr_core", description="TB chest X-ray screening tools")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="score chest X-ray files or folders")
    predict.add_argument("paths", nargs="+", metavar="PATH")
    predict.add_argument(
        "--model",
        default=None,
        help="registry version, or a model folder whose metadata.json records the model's sha256 "
        "(default: the current version)",
    )
    predict.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    predict.add_argument("--output", "-o", default=None, help="write here instead of standard output")
    predict.set_defaults(handler=_predict)

    pipeline = commands.add_parser("pipeline", help="ingest >> train >> evaluate, then register")
    pipeline.add_argument("--data", default=None, help="dataset path (default: data.path in params.yaml)")
    pipeline.add_argument("--params", default=None)
    pipeline.add_argument("--work", default="work")
    pipeline.add_argument("--epochs", type=int, default=None)
    pipeline.add_argument("--promote", choices=["gate", "never", "always"], default="gate")
    pipeline.set_defaults(handler=_pipeline)

    models = commands.add_parser("models", help="list, register, promote or roll back model versions")
    models.add_argument("action", choices=["list", "register", "promote", "rollback"])
    models.add_argument("target", nargs="?", help="candidate folder (register) or version (promote)")
    models.add_argument("--promote", action="store_true", help="with register: make it current")
    models.set_defaults(handler=_models)

    job = commands.add_parser("job-run", help=argparse.SUPPRESS)
    job.add_argument("job_dir")
    job.set_defaults(handler=_job_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "models" and args.action in ("register", "promote") and not args.target:
        print(f"error: models {args.action} needs a target", file=sys.stderr)
        return 2
    try:
        return args.handler(args)
    except CxrError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk or a read-only folder mid-run: one line, not a traceback
        print(f"error: {os_error_message(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
