"""The one command line: ``python -m cxr_core ingest|train|evaluate|loso|pipeline|predict|lungs|lungs-train|calibrate|models|params|node``.

``predict`` is the batch scorer: one row per file, a bad file gets ``ok: false`` and its message and
the batch goes on; the exit code is non-zero only when the command itself is misused (no such model,
no input path: 2) or the machine fails it (a full disk, a read-only folder: 1), and then the reason is
one ``error: ...`` line, not a traceback. ``ingest``, ``train`` and ``evaluate`` are the stages that
``dvc repro`` and the Airflow DAG run; ``pipeline`` chains them and registers the result; ``params``
prints the complete settings or writes a run's params file from form values; ``models`` lists, registers, promotes and rolls back registry versions
(promotion only with a current gate pass for the exact weights, or an audited ``--override-gate``);
``users`` keeps the dashboard's named admin accounts; ``audit verify`` checks the audit trail's chain;
``node`` runs the DICOM screening node beside a PACS (``cxr_core.node``).
"""

import argparse
import csv
import json
import sys
from pathlib import Path

from cxr_core.errors import CxrError, os_error_message
from cxr_core.settings import Layout

PREDICT_FIELDS = [
    "file",
    "ok",
    "probability",
    "label",
    "threshold",
    "model_version",
    "site",
    "evidence_in_lungs",
    "error",
    "warning",
]


def _predict(args) -> int:
    from cxr_core.modelling.predictor import Predictor, predict_paths, spreadsheet_safe
    from cxr_core.registry.sites import SiteProfiles
    from cxr_core.registry.store import Registry

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    registry = Registry()
    model_dir, warning = registry.resolve_with_warning(args.model)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    predictor = Predictor(model_dir)
    sites = SiteProfiles(registry.root)
    if args.site:
        predictor.use_site(sites.load(args.site))
    elif (active := sites.active()) is not None:
        try:
            predictor.use_site(active)
        except CxrError as error:  # the active profile belongs to another model: say so, use the model's own
            print(f"warning: {error}", file=sys.stderr)
    if predictor.site:
        print(f"site profile in use: {predictor.site} (threshold {predictor.threshold:.4f})", file=sys.stderr)
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


def _params_of(args) -> dict:
    """The params file named by ``--params`` (or the project's), completed and with ``--set`` applied."""
    from cxr_core.settings import load_params, set_dotted

    try:
        params = load_params(args.params)
    except ValueError as error:  # an unknown or mistyped key in the params file
        raise CxrError(f"{args.params or 'params.yaml'}: {error}") from error
    for assignment in args.set or []:
        key, sep, value = assignment.partition("=")
        if not sep:
            raise CxrError(f"--set takes KEY=VALUE, got {assignment!r}")
        try:
            params = set_dotted(params, key.strip(), value)
        except ValueError as error:
            raise CxrError(str(error)) from error
    return params


def _data_path(args, params: dict) -> Path:
    from cxr_core.pipeline.dataset_roots import allowed_dataset_path

    return allowed_dataset_path(args.data or params["data"]["path"])


def _params(args) -> int:
    import yaml

    from cxr_core.settings import DEFAULT_PARAMS, params_from_form, params_yaml_text

    if args.write:
        DEFAULT_PARAMS.write_text(params_yaml_text())
        print(f"wrote the defaults to {DEFAULT_PARAMS}")
        return 0
    params = _params_of(args)
    if args.form:
        try:
            params = params_from_form(params, json.loads(args.form))
        except ValueError as error:
            raise CxrError(f"--form: {error}") from error
    if args.out:
        from cxr_core.fsutil import write_text_atomic

        write_text_atomic(args.out, yaml.safe_dump(params, sort_keys=False))
        print(args.out)
    else:
        print(yaml.safe_dump(params, sort_keys=False), end="")
    return 0


def _ingest(args) -> int:
    from cxr_core.pipeline.ingest import run_ingest

    params = _params_of(args)
    summary = run_ingest(_data_path(args, params), args.out, params["ingest"])
    print(json.dumps(summary))
    return 0


def _train(args) -> int:
    from cxr_core.pipeline.train import run_train

    metadata = run_train(args.ingest, args.out, _params_of(args)["train"])
    print(json.dumps({key: metadata[key] for key in ("threshold", "val_auc", "epochs_run", "train_seconds")}))
    return 0


def _evaluate(args) -> int:
    from cxr_core.pipeline.evaluate import run_evaluate

    report = run_evaluate(args.ingest, args.model, args.out, _params_of(args)["evaluate"])
    print(json.dumps({key: report[key] for key in ("roc_auc", "sensitivity", "specificity")}))
    return 0


def _loso(args) -> int:
    from cxr_core.pipeline.ingest import run_ingest
    from cxr_core.pipeline.loso import REPORT_FILE, merge_reports, run_loso
    from cxr_core.settings import RECIPES

    if args.merge:
        from cxr_core.fsutil import write_json_atomic

        ignored = [flag for flag, given in (("--data", args.data), ("--ingest", args.ingest), ("--holdout", args.holdout),
                   ("--save-models", args.save_models), ("--resume", args.resume), ("--no-within", args.no_within),
                   ("--set", args.set), ("--recipe", args.recipe != "shipped")) if given]  # fmt: skip
        if ignored:
            raise CxrError(f"--merge trains nothing: {', '.join(ignored)} would be ignored; leave them out")
        if args.out is None:
            raise CxrError("--merge needs --out DIR: where the merged loso.json goes")
        target = (Path(args.out) / REPORT_FILE).resolve()
        if any(Path(path).resolve() == target for path in args.merge):
            raise CxrError(f"--out would overwrite one of the reports being merged ({target})")
        report = merge_reports([_read_json_report(path) for path in args.merge])
        write_json_atomic(target, report)
        print(json.dumps(report["summary"], indent=2))
        print(f"wrote {Path(args.out) / REPORT_FILE} (seeds {report['seeds']})", file=sys.stderr)
        return 0
    if args.recipe not in RECIPES:  # before the ingest, not after minutes of it
        raise CxrError(f"unknown recipe {args.recipe!r}; choose one of {', '.join(RECIPES)}")
    params = _params_of(args)
    args.out = args.out or "work/loso"
    ingest_dir = Path(args.ingest) if args.ingest else Path(args.out) / Layout.INGEST_DIR
    if not args.ingest:
        run_ingest(_data_path(args, params), ingest_dir, params["ingest"])
    report = run_loso(
        ingest_dir,
        args.out,
        params["train"],
        recipe=args.recipe,
        seeds=args.seeds,
        holdouts=args.holdout,
        within=not args.no_within,
        n_boot=params["evaluate"]["n_boot"],
        save_models=args.save_models,
        resume=args.resume,
    )
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {Path(args.out) / REPORT_FILE}", file=sys.stderr)
    return 0


def _read_json_report(path: str) -> dict:
    """A report file named on the command line, or a message that says which one is wrong."""
    try:
        report = json.loads(Path(path).read_text())
    except OSError as error:
        raise CxrError(f"cannot read {path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise CxrError(f"{path} is not a JSON report ({error.msg}, line {error.lineno})") from None
    except ValueError as error:  # not UTF-8 text
        raise CxrError(f"{path} is not a JSON report ({error})") from None
    runs = report.get("runs") if isinstance(report, dict) else None
    missing = [key for key in ("recipe", "params", "two_class_sources") if not isinstance(report, dict) or key not in report]
    if not isinstance(runs, list) or missing:
        # loso.partial.json holds runs but no recipe: an unfinished run is not merged as if complete
        raise CxrError(f"{path} is not a finished loso.json report (no {', '.join(missing) or 'runs'})")
    if not all(isinstance(run, dict) and {"kind", "seed", "test"} <= set(run) for run in runs):
        raise CxrError(f"{path} is not a loso.json report (a run without kind, seed or test results)")
    return report


def _calibrate(args) -> int:
    from cxr_core.modelling.predictor import Predictor
    from cxr_core.pipeline.dataset_roots import allowed_dataset_path
    from cxr_core.pipeline.local_validation import local_report, score_local_set
    from cxr_core.registry.sites import OperatingRule, SiteProfiles, build_profile
    from cxr_core.registry.store import Registry

    if args.override_floor and not args.activate:  # before minutes of scoring, not after
        raise CxrError("--override-floor only goes with --activate")
    registry = Registry()
    model_dir, warning = registry.resolve_with_warning(None)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    predictor = Predictor(model_dir)
    scored = score_local_set(allowed_dataset_path(args.data), predictor)
    card = predictor.metadata.get("metrics") or {}
    report = local_report(
        scored["labels"], scored["scores"], predictor.model_threshold, card, n_boot=args.n_boot
    )
    rule = OperatingRule(
        min_sensitivity=None if args.referrals_per_100 is not None else args.min_sensitivity,
        referrals_per_100=args.referrals_per_100,
    )
    profile = build_profile(
        args.name, predictor.version, scored["labels"], scored["scores"], rule,
        calibration=args.calibration, card_auc=card.get("roc_auc"), n_boot=args.n_boot,
    )  # fmt: skip
    profile["evidence"]["skipped"] = len(scored["skipped"])
    profile["evidence"]["at_model_threshold"] = {
        key: report.get(key) for key in ("sensitivity", "specificity", "tp", "fp", "tn", "fn")
    }
    sites = SiteProfiles(registry.root)
    sites.save(profile)
    if args.activate:  # saved first: a refusal below the floor keeps the profile for a later decision
        sites.activate(profile["name"], override_reason=args.override_floor)  # actor: cli:<user>
    evidence = profile["evidence"]
    print(json.dumps({
        "site": profile["name"], "model_version": profile["model_version"], "threshold": profile["threshold"],
        "rule": profile["rule"], "model_threshold": predictor.model_threshold, "films": evidence["films"],
        "roc_auc": evidence["roc_auc"], "roc_auc_ci": evidence["roc_auc_ci"],
        "cross_validated": {k: evidence["cross_validated"][k] for k in
                            ("sensitivity", "sensitivity_ci", "specificity", "specificity_ci", "referrals_per_100")},
        "weak": evidence["weak"], "warning": report.get("warning"), "active": sites.active_name(),
    }, indent=2))  # fmt: skip
    return 0


def _check_unseen(args) -> int:
    from cxr_core.fsutil import write_json_atomic
    from cxr_core.modelling.predictor import Predictor
    from cxr_core.pipeline.dataset_roots import allowed_dataset_path
    from cxr_core.pipeline.unseen_check import report_lines, run_unseen_check
    from cxr_core.registry.store import Registry
    from cxr_core.settings import resolve_data_path

    data = allowed_dataset_path(args.data)
    masks = None
    if args.masks:  # the same boundary as the films: the list's folder must lie inside a dataset root
        masks = resolve_data_path(args.masks)
        allowed_dataset_path(masks.parent)
        if not masks.is_file():
            raise CxrError(f"there is no mask list at {args.masks}")
    out = Path(args.out) if args.out else None
    if out is not None and (out.is_dir() or not out.parent.is_dir()):  # before minutes of scoring, not after
        raise CxrError(f"--out {args.out} must name a file in an existing folder")
    model_dir, warning = Registry().resolve_with_warning(args.model)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    report = run_unseen_check(data, Predictor(model_dir), masks=masks, sources=args.source, n_boot=args.n_boot)
    print("\n".join(report_lines(report, json_written=out is not None)))  # shown even if the file fails
    if out is not None:
        write_json_atomic(out, report)
    return 0


def _lungs_train(args) -> int:
    from cxr_core.pipeline.dataset_roots import allowed_dataset_path
    from cxr_core.pipeline.datasets import discover
    from cxr_core.pipeline.lung_training import run_lung_train
    from cxr_core.registry.store import Registry
    from cxr_core.settings import lung_models_dir

    if args.promote and not args.register:  # before minutes of training, not after
        raise CxrError("--promote needs --register")
    params = _params_of(args)
    data = allowed_dataset_path(args.data or params["lungs"]["data"])
    # The gate also judges what it refuses: the probes, and every film of a labelled dataset (the
    # classifier's by default). Found before the minutes of training, so a wrong folder costs nothing.
    census = None
    if args.register or args.census:
        census = allowed_dataset_path(args.census or params["data"]["path"])
        discover(census)
    if int(params["lungs"]["distill_films"]) > 0:  # the films to learn from, found before training too
        if not params["lungs"]["distill_data"]:
            raise CxrError("lungs.distill_films needs lungs.distill_data: a labelled X-ray dataset to learn from")
        params["lungs"]["distill_data"] = str(allowed_dataset_path(params["lungs"]["distill_data"]))
        discover(params["lungs"]["distill_data"])
    metadata = run_lung_train(data, args.out, params["lungs"], census_data=census)
    summary = {key: metadata.get(key) for key in ("held_out", "cross_source", "census", "parameters", "train_seconds")}
    if args.register:
        registry = Registry(lung_models_dir(), kind="lungs")
        summary["version"] = registry.register(args.out)
        verdict = _judge_lung_model(registry, summary["version"])
        summary["gate"] = {"passed": verdict.passed, "reasons": verdict.reasons}
        if args.promote:
            registry.promote(summary["version"], override_reason=args.override_gate)
            summary["promoted"] = True
    print(json.dumps(summary, indent=2))
    return 0


def _judge_lung_model(registry, version: str):
    """The lung gate on a registered lung model's own record, kept as its verdict (what promote asks for)."""
    from cxr_core.registry.gate import lung_gate, policy_stamp

    verdict = lung_gate(registry.metadata(version))
    registry.record_verdict(version, {
        "passed": verdict.passed, "reasons": verdict.reasons, "checks": verdict.checks,
        "floors": verdict.floors, "policy": policy_stamp(verdict.floors),
        "compared_with": registry.current_version(), "registry_stamp": registry.pointer_stamp(),
    })  # fmt: skip
    return verdict


def _lung_models(args, registry) -> int:
    """``models list|register --lungs``. A lung model trained apart (``lungs-train`` without --register,
    as the #23.1 candidates were) is registered with the lung gate's verdict on its own record, so that
    the version whose crops were measured is the one promoted, not a retrained twin."""
    if args.action == "list":
        current = registry.current_version()
        for meta in registry.versions():
            held_out = meta.get("held_out") or {}
            films = (meta.get("census") or {}).get("films") or {}
            dice = ", ".join(f"{source} {values.get('dice_mean')}" for source, values in sorted(held_out.items()))
            census = f"refused {films.get('refused')} of {films.get('checked')}" if films else "no census"
            marker = "*" if meta["version"] == current else " "
            print(f"{marker} {meta['version']}  {meta.get('input_side')} px  Dice {dice}  {census}")
    elif args.action == "register":
        version = registry.register(args.target)
        verdict = _judge_lung_model(registry, version)
        print(json.dumps({"version": version, "gate": {"passed": verdict.passed, "reasons": verdict.reasons}}, indent=2))
        if args.promote:
            registry.promote(version, override_reason=args.override_gate)
            print(f"current lung model: {version}")
    else:
        raise CxrError(f"models {args.action} is for classifiers; a lung model's card is written when it is trained")
    return 0


def _lungs(args) -> int:
    """One 0/255 mask per readable input, at the input's own size; a bad file is reported, the rest go on."""
    import cv2

    from cxr_core.imaging.decode import read_image
    from cxr_core.modelling.lungs import LungModel
    from cxr_core.modelling.predictor import iter_image_files
    from cxr_core.registry.store import Registry
    from cxr_core.settings import lung_models_dir

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    registry = Registry(lung_models_dir())
    model_dir, warning = registry.resolve_with_warning(args.model)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    lungs = LungModel(model_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    for path in iter_image_files(args.paths):
        try:
            result = lungs.segment(read_image(path).pixels)
        except CxrError as error:
            print(f"{path}: not segmented: {error}", file=sys.stderr)
            continue
        name, copy = path.stem, 1
        while name in taken:  # two inputs with one stem (scan.png, scan.dcm) must not overwrite each other
            copy += 1
            name = f"{path.stem}-{copy}"
        taken.add(name)
        target = out / f"{name}.png"
        if not cv2.imwrite(str(target), result["mask"]):
            raise OSError(f"cannot write {target}")
        note = "" if result["ok"] else f" (not a plausible pair of lung fields: {result['reason']})"
        print(f"{path} -> {target}{note}")
    return 0


def _pipeline(args) -> int:
    from cxr_core.pipeline.run import run_pipeline

    params = _params_of(args)
    if args.epochs is not None:
        params["train"]["epochs"] = args.epochs
    result = run_pipeline(
        _data_path(args, params), args.work, params, promote=args.promote, override_reason=args.override_gate
    )
    print(json.dumps(result, indent=2))
    return 0


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _models(args) -> int:
    from cxr_core.registry.store import Registry
    from cxr_core.settings import lung_models_dir

    registry = Registry(lung_models_dir(), kind="lungs") if args.lungs else Registry()
    what = "lung model" if args.lungs else "model"
    if args.action == "promote":
        registry.promote(args.target, override_reason=args.override_gate)
        print(f"current {what}: {args.target}")
    elif args.action == "rollback":
        print(f"current {what}: {registry.rollback()}")
    elif args.action == "verdict":
        print(json.dumps(registry.verdict(args.target), indent=2))
    elif args.lungs:
        return _lung_models(args, registry)
    elif args.action == "list":
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
        if args.promote:  # a bare registration carries no verdict: only an audited override promotes it
            registry.promote(version, override_reason=args.override_gate)
        print(version)
    elif args.action == "convert":
        from cxr_core.modelling.runtime import write_classifier_tflite

        twin = registry.add_serving_twin(args.target, write_classifier_tflite)
        print(f"{args.target}: model.tflite written (sha256 {twin}), equal to Keras within 1e-4; TFLite serves")
    elif args.action == "card":
        from cxr_core.registry.card import write_card

        print(write_card(registry.version_dir(args.target or registry.current_version())))
    return 0


def _node(args) -> int:
    """The DICOM screening node, or (``--status``, ``--retry-failed``) a look at / a nudge to its queue."""
    from cxr_core.node.service import run, state_dir

    settings = _params_of(args)["node"]
    for key, value in (
        ("ae_title", args.ae_title), ("bind", args.bind), ("port", args.port), ("state_dir", args.state_dir),
        ("uid_root", args.uid_root), ("destination_ae", args.destination_ae),
        ("destination_host", args.destination_host), ("destination_port", args.destination_port),
    ):  # fmt: skip
        if value is not None:
            settings[key] = value
    if args.allow is not None:
        settings["allowed_calling_aes"] = args.allow
    if args.status or args.retry_failed:
        from cxr_core.node.queue import FilmQueue

        queue = FilmQueue(state_dir(settings))
        if args.retry_failed:
            print(f"{queue.retry_failed()} failed deliveries put back in line (a running node sends them)")
        print(json.dumps({"films": queue.counts(), "skipped": queue.skip_reasons()}, indent=2))
        return 0
    return run(settings, model=args.model, site=args.site)
def _users(args) -> int:
    from cxr_core import auth

    if args.action == "list":
        for name in auth.configured_users():
            print(name)
        return 0
    if not args.name:
        raise CxrError(f"users {args.action} needs a user name")
    if args.action == "remove":
        auth.remove_user(args.name)
        print(f"removed admin user {args.name} from {auth.users_file()}")
        return 0
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        import getpass

        password = getpass.getpass(f"Password for {args.name}: ")
        if getpass.getpass("Again: ") != password:
            raise CxrError("the two passwords differ; nothing was changed")
    path = auth.add_user(args.name, password, replace=args.replace)
    print(f"admin user {args.name} saved in {path}")
    return 0


def _audit(args) -> int:
    from cxr_core.registry import audit
    from cxr_core.settings import models_dir

    report = audit.verify(args.root or models_dir())
    print(report.message())
    return 0 if report.ok else 1


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
    predict.add_argument("--site", default=None, help="decide at this site profile's threshold")
    predict.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    predict.add_argument("--output", "-o", default=None, help="write here instead of standard output")
    predict.set_defaults(handler=_predict)

    def settings_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--params", default=None, help="params file (default: params.yaml)")
        command.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override one setting, e.g. --set train.epochs=5 (repeatable)",
        )

    layout = Layout
    ingest = commands.add_parser(
        "ingest", help="stage 1: dataset -> uint8 shards with duplicate-aware splits"
    )
    settings_options(ingest)
    ingest.add_argument("--data", default=None, help="dataset path (default: data.path in params.yaml)")
    ingest.add_argument("--out", default=f"work/{layout.INGEST_DIR}")
    ingest.set_defaults(handler=_ingest)

    train = commands.add_parser(
        "train", help="stage 2: train on the shards, choose the threshold on validation"
    )
    settings_options(train)
    train.add_argument("--ingest", default=f"work/{layout.INGEST_DIR}")
    train.add_argument("--out", default=f"work/{layout.MODEL_DIR}")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="stage 3: test-split metrics, plots and predictions")
    settings_options(evaluate)
    evaluate.add_argument("--ingest", default=f"work/{layout.INGEST_DIR}")
    evaluate.add_argument("--model", default=f"work/{layout.MODEL_DIR}")
    evaluate.add_argument("--out", default=f"work/{layout.EVALUATE_DIR}")
    evaluate.set_defaults(handler=_evaluate)

    params = commands.add_parser("params", help="print the complete settings, or write a run's params file")
    settings_options(params)
    params.add_argument("--form", default=None, help="JSON of form values (Retrain page / Airflow fields)")
    params.add_argument("--out", default=None, help="write the resulting params file here")
    params.add_argument("--write", action="store_true", help="rewrite params.yaml from the built-in defaults")
    params.set_defaults(handler=_params)

    loso = commands.add_parser(
        "loso", help="leave-one-source-out: train without each two-class source, test on it (JSON report)"
    )
    settings_options(loso)
    source = loso.add_mutually_exclusive_group()
    source.add_argument("--data", default=None, help="dataset to ingest first (default: data.path)")
    source.add_argument("--ingest", default=None, help="an ingest folder to reuse instead")
    loso.add_argument("--out", default=None, help="where loso.json (and the ingest) go (default: work/loso)")
    loso.add_argument(
        "--recipe", default="shipped", help="shipped (params.yaml), reference (the original CNN) or another of settings.RECIPES"
    )
    loso.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    loso.add_argument(
        "--holdout", nargs="+", default=None, help="only these sources (default: every two-class one)"
    )
    loso.add_argument("--no-within", action="store_true", help="skip the pooled within-source comparison")
    loso.add_argument(
        "--save-models", action="store_true", help="keep each fold's network in OUT/models (to look at overlays)"
    )
    loso.add_argument(
        "--resume", action="store_true", help="with --save-models: score a fold's saved network instead of training it again"
    )
    loso.add_argument(
        "--merge", nargs="+", default=None, metavar="LOSO_JSON",
        help="instead of training: merge reports of the same recipe and ingest (e.g. seeds run apart) into OUT/loso.json",
    )
    loso.set_defaults(handler=_loso)

    calibrate = commands.add_parser(
        "calibrate", help="validate the model in use on a site's confirmed films and save its site profile"
    )
    calibrate.add_argument(
        "--data", required=True, help="labelled local films (Kaggle folders, NLM, CSV, .zip)"
    )
    calibrate.add_argument("--name", required=True, help="the site profile to create or replace")
    rule = calibrate.add_mutually_exclusive_group()
    rule.add_argument("--min-sensitivity", type=float, default=0.90, help="sensitivity floor (default 0.90)")
    rule.add_argument("--referrals-per-100", type=float, default=None, help="or: a referral budget")
    calibrate.add_argument("--calibration", choices=["platt", "isotonic"], default=None)
    calibrate.add_argument("--activate", action="store_true", help="make it the profile in use")
    calibrate.add_argument(
        "--override-floor", metavar="REASON", default=None,
        help="with --activate: switch it on even below its sensitivity floor; the reason goes to the audit trail",
    )  # fmt: skip
    calibrate.add_argument("--n-boot", type=int, default=1000)
    calibrate.set_defaults(handler=_calibrate)

    check = commands.add_parser(
        "check-unseen",
        help="a hospital in no data here: the model in use on its labelled films, against its experts' marks",
    )
    check.add_argument("--data", required=True, help="labelled films (Kaggle folders, NLM, manifest, .zip); "
                       "lesions.csv beside them (path,xmin,ymin,xmax,ymax) adds the lesion targets")  # fmt: skip
    check.add_argument("--masks", default=None, help="experts' lung masks: a CSV of image,mask pairs, both "
                       "relative to the CSV's folder (films inside a .zip are not matched)")  # fmt: skip
    check.add_argument("--source", action="append", default=None, help="only films of this source (repeatable)")
    check.add_argument("--model", default=None, help="registry version or model folder (default: the one in use)")
    check.add_argument("--out", default=None, help="write the whole report (every film) as JSON")
    check.add_argument("--n-boot", type=int, default=1000)
    check.set_defaults(handler=_check_unseen)

    lungs = commands.add_parser("lungs", help="lung-field masks (0/255 PNG, the input's own size) for files")
    lungs.add_argument("paths", nargs="+", metavar="PATH")
    lungs.add_argument("--out", required=True, help="folder for <stem>.png masks")
    lungs.add_argument("--model", default=None, help="lung model version or folder (default: current)")
    lungs.set_defaults(handler=_lungs)

    lungs_train = commands.add_parser("lungs-train", help="train and measure the lung U-Net on a mask set")
    settings_options(lungs_train)
    lungs_train.add_argument("--data", default=None, help="folder with manifest.csv (default: lungs.data)")
    lungs_train.add_argument("--out", default="work/lungs")
    lungs_train.add_argument(
        "--census", default=None,
        help="labelled X-rays the model must not refuse, for the gate (with --register, default: data.path)",
    )  # fmt: skip
    lungs_train.add_argument("--register", action="store_true", help="register it as a lung model version")
    lungs_train.add_argument(
        "--promote", action="store_true", help="with --register: make it current if it passes the lung gate"
    )
    lungs_train.add_argument(
        "--override-gate", metavar="REASON", default=None, help="promote even if the gate failed (audited)"
    )
    lungs_train.set_defaults(handler=_lungs_train)

    pipeline = commands.add_parser("pipeline", help="ingest >> train >> evaluate, then register")
    settings_options(pipeline)
    pipeline.add_argument("--data", default=None, help="dataset path (default: data.path in params.yaml)")
    pipeline.add_argument("--work", default="work")
    pipeline.add_argument("--epochs", type=int, default=None)
    pipeline.add_argument(
        "--promote", choices=["gate", "never"], default="gate", help="gate: only if the quality gate passes"
    )
    pipeline.add_argument(
        "--override-gate", metavar="REASON", default=None,
        help="promote the candidate even if it fails the gate; the reason goes to the audit trail",
    )  # fmt: skip
    pipeline.set_defaults(handler=_pipeline)

    models = commands.add_parser("models", help="list, register, promote or roll back model versions")
    models.add_argument("action", choices=["list", "register", "promote", "rollback", "card", "verdict", "convert"])
    models.add_argument(
        "target", nargs="?",
        help="candidate folder (register) or version (promote, verdict, convert; card: default current)",
    )  # fmt: skip
    models.add_argument("--promote", action="store_true", help="with register: make it current")
    models.add_argument("--lungs", action="store_true", help="the lung models' registry instead of the classifiers'")
    models.add_argument(
        "--override-gate", metavar="REASON", default=None,
        help="promote without a current pass of the quality gate for these weights (audited)",
    )  # fmt: skip
    models.set_defaults(handler=_models)

    node = commands.add_parser(
        "node", help="DICOM node beside the PACS: receive chest films, send SR + Secondary Capture back"
    )
    settings_options(node)
    node.add_argument("--ae-title", default=None, help="this node's AE title (default: node.ae_title)")
    node.add_argument("--bind", default=None, help="listen address (default: node.bind)")
    node.add_argument("--port", type=int, default=None, help="listen port (default: node.port, 11112)")
    node.add_argument(
        "--allow", nargs="*", default=None, metavar="AE", help="calling AE titles let in (none: any)"
    )
    node.add_argument("--destination-ae", default=None, help="the PACS's AE title for results")
    node.add_argument("--destination-host", default=None)
    node.add_argument("--destination-port", type=int, default=None)
    node.add_argument("--state-dir", default=None, help="queue and received films (default: node.state_dir)")
    node.add_argument("--uid-root", default=None, help="organisation UID root (default: 2.25 UUID form)")
    node.add_argument("--model", default=None, help="registry version (default: the current one, followed)")
    node.add_argument("--site", default=None, help="site profile (default: the active one)")
    node.add_argument("--status", action="store_true", help="print the queue's counts and refusal reasons")
    node.add_argument("--retry-failed", action="store_true", help="put failed deliveries back in line")
    node.set_defaults(handler=_node)
    users = commands.add_parser("users", help="named admin accounts of the dashboard (argon2 hashes)")
    users.add_argument("action", choices=["add", "remove", "list"])
    users.add_argument("name", nargs="?")
    users.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    users.add_argument("--replace", action="store_true", help="change the password of an existing user")
    users.set_defaults(handler=_users)

    audit_cmd = commands.add_parser("audit", help="check the audit trail's hash chain")
    audit_cmd.add_argument("action", choices=["verify"])
    audit_cmd.add_argument("--root", default=None, help="registry folder (default: the models folder)")
    audit_cmd.set_defaults(handler=_audit)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "models" and args.action in ("register", "promote", "verdict", "convert") and not args.target:
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
