"""Airflow 3 DAG ``tb_batch_screening``: screen an archive of chest X-rays with the serving model.

``plan_shards >> predict_shard.expand(...) >> merge_results``

* ``plan_shards`` lists the films of a folder (the same rule as ``python -m cxr_core predict``: image
  extensions and extensionless files, hidden ones skipped) or of a CSV list, and writes them as small
  JSON shard files into the run folder. XCom carries only the shard files' paths. By default there are
  as many shards as scoring slots (``workers``), so each slot pays the start-up below once.
* ``predict_shard`` is mapped over the shards (dynamic task mapping): each runs
  ``python -m cxr_core predict --format jsonl -o <shard output>`` in the project environment, so each
  mapped task pays TensorFlow's and the model's start-up once and then scores its films in batches.
  A bad film gets a row with ``ok: false`` and never fails its shard.
* ``merge_results`` writes ``results.csv``, ``results.jsonl`` and ``summary.json`` (counts by label,
  unreadable films, the TB-suspected list) into the run folder.

Retry safety: a shard's output is written to a hidden partial file and renamed into place
(``os.replace``) only when it holds one row per film of the shard, so a retried shard replaces its
output whole, and partial files left by a killed try are removed before the next try starts. The merged
files are written the same way. Tasks exchange only paths and counts, and every file lives in the run
folder (``$CXR_AIRFLOW_WORK_DIR/<run_id>/``), so the DAG runs unchanged on the LocalExecutor and on
Celery workers that share that folder and the dataset folders.

Inputs are read only inside the dataset roots (``CXR_DATASET_ROOTS``, separated by ``:``; by default
the project's ``data/``), like every other path a user types in this project.
Environment: see ``cxr_dag_support.py`` (project folder, project interpreter, work folder).
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import os
import sys
from datetime import timedelta
from pathlib import Path

from airflow.sdk import Param, dag, get_current_context, task

if str(Path(__file__).resolve().parent) not in sys.path:  # the dags folder, when loaded by file path
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from cxr_dag_support import ON_DEMAND, PROJECT_ROOT, read_json, run_dir, run_project, write_atomically  # noqa: E402

# The predict command's rule for what in a folder is a film (cxr_core.imaging.decode.IMAGE_EXTENSIONS;
# tests/test_batch_dag.py checks that the two lists agree).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"})
TB_LABEL = "Tuberculosis"
MAX_SHARDS = 1000  # below Airflow's max_map_length (1024): larger archives get larger shards
# Automatic shards stop growing here: start-up is then ~5 % of a shard, and a failed shard retries no
# more than a few minutes of scoring.
MAX_SHARD_FILMS = 5000
CSV_PATH_COLUMNS = ("path", "file", "filename", "image")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")  # neutralised in the CSV, as predict --format csv does

DAG_PARAMS = {
    "source": Param(
        "data/sample",
        type="string",
        minLength=1,
        title="Films",
        description="A folder of films (searched recursively) or a CSV list of files (a column named "
        "path or file, else the first column; relative paths are relative to the CSV). Relative "
        "paths are relative to the project folder; only the dataset roots are readable.",
    ),
    "shard_size": Param(
        0,
        type="integer",
        minimum=0,
        maximum=MAX_SHARD_FILMS,
        title="Films per shard",
        description="0 (the default): as many shards as scoring slots (Workers), each at most "
        f"{MAX_SHARD_FILMS} films, so each slot loads TensorFlow and the models once. Each shard is one "
        "mapped task that pays that start-up (about 5 s, against about 10-25 ms per film): a fixed size "
        "here overrides the rule (docs/airflow-docker.md has the arithmetic).",
    ),
    "workers": Param(
        1,
        type="integer",
        minimum=1,
        maximum=MAX_SHARDS,
        title="Workers",
        description="Task slots that score this archive at once (Celery workers x their concurrency; "
        "1 on the LocalExecutor with one slot). Only used when Films per shard is 0.",
    ),
    "model": Param(
        "",
        type="string",
        title="Model version",
        description="Registry version to score with; empty = the current version.",
    ),
}


# ------------------------------------------------------------------------------------------ helpers


def _dataset_roots() -> list[Path]:
    configured = os.environ.get("CXR_DATASET_ROOTS")
    roots = configured.split(os.pathsep) if configured else [str(PROJECT_ROOT / "data")]
    return [_resolve(root) for root in roots if root.strip()]


def _resolve(text: str) -> Path:
    path = Path(text).expanduser()
    return (path if path.is_absolute() else PROJECT_ROOT / path).resolve()


def _allowed(path: Path) -> bool:
    return any(path == root or root in path.parents for root in _dataset_roots())


def _films_in_folder(folder: Path) -> list[str]:
    films = []
    for child in sorted(folder.rglob("*")):
        hidden = any(part.startswith(".") for part in child.relative_to(folder).parts)
        image_like = child.suffix.lower() in IMAGE_EXTENSIONS or not child.suffix
        if child.is_file() and not hidden and image_like:
            films.append(str(child))
    return films


def _films_in_csv(listing: Path) -> list[str]:
    with open(listing, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(name) for name in CSV_PATH_COLUMNS if name in header), None)
    body = rows[1:] if column is not None else rows
    column = column or 0
    films = []
    for row in body:
        if len(row) > column and row[column].strip():
            path = Path(row[column].strip()).expanduser()
            films.append(str(path if path.is_absolute() else (listing.parent / path).resolve()))
    return films


def _list_films(source: str) -> list[str]:
    path = _resolve(source)
    if not _allowed(path):
        shown = ", ".join(str(root) for root in _dataset_roots())
        raise ValueError(f"films are read only from the dataset roots ({shown}); set CXR_DATASET_ROOTS")
    if path.is_dir():
        return _films_in_folder(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        films = _films_in_csv(path)
        outside = [film for film in films if not _allowed(Path(film).resolve())]
        if outside:
            raise ValueError(f"{len(outside)} files of the list are outside the dataset roots: {outside[:3]}")
        return films
    raise ValueError(f"{source} is neither a folder nor a .csv list of files")


def _shard_output(shard_file: Path) -> Path:
    return shard_file.parent.parent / "predictions" / (shard_file.stem + ".jsonl")


def _missing_row(film: str) -> dict:
    """The row predict writes for a film it cannot read, for a film that vanished after planning."""
    return {"file": film, "ok": False, "probability": None, "label": None, "error": "file not found"}


def _read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _spreadsheet_safe(value):
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def shard_size(films: int, requested: int, workers: int) -> int:
    """Films per shard: the requested size, or (0) one shard per worker slot, at most MAX_SHARD_FILMS.

    Each shard is a process that pays TensorFlow's and the models' start-up (seconds) before scoring
    its first film; one shard per slot pays it once per slot, where fixed small shards paid it again
    every few hundred films (0.46 of the plain CLI on one worker with shards of 200).
    """
    if requested > 0:
        return requested
    return max(1, min(MAX_SHARD_FILMS, math.ceil(films / max(1, workers))))


# -------------------------------------------------------------------------------------------- tasks


@task(retries=2, execution_timeout=timedelta(minutes=30))
def plan_shards() -> list[str]:
    """List the films and write them as shard files; return the shard files' paths (small XCom)."""
    context = get_current_context()
    params = context["params"]
    films = _list_films(params["source"])
    if not films:
        raise ValueError(f"no films found in {params['source']}")
    size = max(shard_size(len(films), int(params["shard_size"]), int(params["workers"])),
               math.ceil(len(films) / MAX_SHARDS))  # fmt: skip
    work_dir = run_dir(context["run_id"])
    shard_dir = work_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    for stale in shard_dir.glob("shard-*.json"):  # a re-planned run may have fewer shards
        stale.unlink()
    shards = []
    for index, start in enumerate(range(0, len(films), size)):
        shard = shard_dir / f"shard-{index:05d}.json"
        write_atomically(shard, json.dumps({"index": index, "files": films[start : start + size]}))
        shards.append(str(shard))
    plan = {"source": params["source"], "films": len(films), "shard_size": size, "shards": len(shards),
            "workers": int(params["workers"])}  # fmt: skip
    write_atomically(work_dir / "plan.json", json.dumps(plan, indent=2))
    return shards


@task(retries=2, retry_delay=timedelta(seconds=30), execution_timeout=timedelta(hours=2))
def predict_shard(shard_file: str) -> dict:
    """Score one shard with ``python -m cxr_core predict`` and publish its JSONL output atomically."""
    shard = Path(shard_file)
    files = read_json(shard)["files"]
    output = _shard_output(shard)
    output.parent.mkdir(parents=True, exist_ok=True)
    for leftover in output.parent.glob(f".{output.name}.partial-*"):  # from a killed earlier try
        leftover.unlink(missing_ok=True)
    present = [film for film in files if Path(film).is_file()]
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    rows: dict[str, dict] = {}
    try:
        if present:
            model = get_current_context()["params"].get("model") or ""
            run_project(
                "cxr_core", "predict", "--format", "jsonl", "-o", str(partial),
                *(["--model", model] if model else []), "--", *present,
            )  # fmt: skip
            rows = {row["file"]: row for row in _read_rows(partial)}
        lost = [film for film in present if film not in rows]
        if lost:
            raise RuntimeError(f"predict wrote no row for {len(lost)} films of {shard.name}: {lost[:3]}")
        ordered = [rows.get(film) or _missing_row(film) for film in files]
        write_atomically(output, "".join(json.dumps(row) + "\n" for row in ordered))
    finally:
        partial.unlink(missing_ok=True)
    return {
        "output": str(output),
        "films": len(ordered),
        "unreadable": sum(not row.get("ok") for row in ordered),
    }


@task(retries=2, execution_timeout=timedelta(minutes=30))
def merge_results(shard_files: list[str]) -> dict:
    """One CSV, one JSONL and a summary for the whole archive, from the shards in plan order."""
    context = get_current_context()
    work_dir = run_dir(context["run_id"])
    rows: list[dict] = []
    for shard_file in shard_files:
        shard = Path(shard_file)
        expected = read_json(shard)["files"]
        got = _read_rows(_shard_output(shard))
        if [row["file"] for row in got] != expected:
            raise RuntimeError(f"the output of {shard.name} does not hold one row per film of the shard")
        rows.extend(got)

    fields: list[str] = []
    for row in rows:
        fields.extend(key for key in row if key not in fields)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _spreadsheet_safe(value) for key, value in row.items()})
    readable = [row for row in rows if row.get("ok")]
    summary = {
        "run_id": context["run_id"],
        "source": context["params"]["source"],
        "films": len(rows),
        "scored": len(readable),
        "unreadable": len(rows) - len(readable),
        "by_label": dict(sorted(collections.Counter(row.get("label") for row in readable).items())),
        "model_versions": sorted({str(row.get("model_version")) for row in readable}),
        "shards": len(shard_files),
        "tb_suspected": [row["file"] for row in readable if row.get("label") == TB_LABEL],
        "unreadable_files": [row["file"] for row in rows if not row.get("ok")],
    }
    write_atomically(work_dir / "results.csv", table.getvalue())
    write_atomically(work_dir / "results.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    write_atomically(work_dir / "summary.json", json.dumps(summary, indent=2))
    return {  # counts and paths only: the lists stay in summary.json
        "work_dir": str(work_dir),
        "summary": str(work_dir / "summary.json"),
        "films": summary["films"],
        "unreadable": summary["unreadable"],
        "tb_suspected": len(summary["tb_suspected"]),
        "by_label": {str(key): value for key, value in summary["by_label"].items()},
    }


# ---------------------------------------------------------------------------------------------- DAG


@dag(
    dag_id="tb_batch_screening",
    params=DAG_PARAMS,
    tags=["cxr", "screening"],
    doc_md=__doc__,
    **ON_DEMAND,
)
def tb_batch_screening():
    shards = plan_shards()
    predicted = predict_shard.expand(shard_file=shards)
    predicted >> merge_results(shards)


tb_batch_screening_dag = tb_batch_screening()
