""" "How will it do at a hospital it has never seen?": leave-one-source-out evaluation of a training recipe.

A random split of pooled sources rewards recognising the hospital: when one source supplies only TB
films and another only normals, framing and exposure separate the classes. So for every source that
has both classes, the recipe is trained on all *other* sources (their train split; early stopping and
the threshold on their validation split) and tested on every film of the held-out source. Films of
other sources that are duplicates of a held-out film (the ingest's duplicate groups) are left out of
training, or the held-out hospital would leak in through a re-encoded copy.

Beside it, the same recipe trained on the pooled train split is tested on each two-class source's
test split ("within-source"): the figure to compare with LOSO, and an upper bound for it.

Every fold is repeated over several seeds (run-to-run spread on a hospital of ~140 films is about
+-0.03-0.04 AUC), and reported as the mean and range. Training goes through
:func:`cxr_core.pipeline.train.fit_network`, the loop that trains the shipped model.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cxr_core import metrics, settings
from cxr_core.fsutil import write_json_atomic
from cxr_core.pipeline.datasets import sources_with_both_classes
from cxr_core.pipeline.ingest import load_split
from cxr_core.settings import Layout

REPORT_FILE = "loso.json"


def load_ingested(ingest_dir: str | Path) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Every ingested film (all splits) with its manifest row."""
    parts = [load_split(ingest_dir, split) for split in ("train", "val", "test")]
    images = np.concatenate([part[0] for part in parts])
    labels = np.concatenate([part[1] for part in parts])
    rows = [row for part in parts for row in part[2]]
    return images, labels, rows


MIN_PER_CLASS = settings.MIN_FILMS_PER_CLASS  # a source with one stray normal (TBX11K) cannot be judged within itself


def two_class_sources(rows: list[dict], min_per_class: int = MIN_PER_CLASS) -> list[str]:
    """Sources that supply both classes (at least ``min_per_class`` films of each): the only ones where
    a within-source AUC means anything."""
    return sources_with_both_classes([row["label"] for row in rows], [row["source"] for row in rows], min_per_class)


def holdout_split(rows: list[dict], holdout: str) -> dict[str, np.ndarray]:
    """Indices of one LOSO fold: train/val from the other sources, test = all of ``holdout``.

    ``excluded`` lists films of other sources left out because their duplicate group holds a film of
    the held-out source.
    """
    split = np.array([row["split"] for row in rows])
    source = np.array([row["source"] for row in rows])
    group = np.array([str(row["group"]) for row in rows])
    if holdout not in set(source):
        raise ValueError(f"no films of source {holdout!r} in the ingested data")
    tainted = np.isin(group, np.unique(group[source == holdout])) & (source != holdout)
    usable = (source != holdout) & ~tainted
    return {
        "train": np.flatnonzero(usable & (split == "train")),
        "val": np.flatnonzero(usable & (split == "val")),
        "test": np.flatnonzero(source == holdout),
        "excluded": np.flatnonzero(tainted),
    }


def within_source_split(rows: list[dict], sources: list[str]) -> dict[str, np.ndarray]:
    """Indices of the pooled split: train/val of all sources, and each two-class source's test films."""
    split = np.array([row["split"] for row in rows])
    source = np.array([row["source"] for row in rows])
    indices = {"train": np.flatnonzero(split == "train"), "val": np.flatnonzero(split == "val")}
    for name in sources:
        indices[f"test:{name}"] = np.flatnonzero((split == "test") & (source == name))
    return indices


def _scores(y: np.ndarray, p: np.ndarray, threshold: float, n_boot: int) -> dict:
    from sklearn.metrics import roc_auc_score

    low, high = metrics.bootstrap_ci(y, p, "roc_auc", n_boot=n_boot, seed=0)
    point = metrics.operating_point(y, p, threshold)
    return {
        "n": int(len(y)),
        "n_tb": int(np.sum(y)),
        "roc_auc": round(float(roc_auc_score(y, p)), 4) if len(np.unique(y)) == 2 else None,
        "roc_auc_ci": [low, high],
        "sensitivity": point["sensitivity"],
        "specificity": point["specificity"],
    }


def _fit_and_score(
    images, labels, rows, train_idx, val_idx, tests: dict[str, np.ndarray], params: dict, n_boot: int,
    extras: dict | None = None, save_to: Path | None = None, resume: bool = False,
) -> dict:  # fmt: skip
    import keras

    from cxr_core.pipeline.shortcut import auc_or_none, fit_shortcut, shortcut_scores
    from cxr_core.pipeline.train import choose_operating_threshold, fit_network, targets_for

    sources = [rows[i]["source"] for i in train_idx]
    targets = {"targets_train": None, "targets_val": None}
    if extras is not None:  # the same rule as run_train: no lung masks in the ingest, no evidence loss
        for key, idx in (("targets_train", train_idx), ("targets_val", val_idx)):
            targets[key] = targets_for(params, extras["masks"][idx], [rows[i] for i in idx])
    started = time.perf_counter()
    if resume and save_to is not None and Path(save_to).exists():  # scored again, not trained again
        from cxr_core.modelling.networks import load_model

        model, epochs_run, seconds = load_model(save_to), None, None
    else:
        model, history = fit_network(
            images[train_idx], labels[train_idx], sources, images[val_idx], labels[val_idx], params, **targets,
            sources_val=[rows[i]["source"] for i in val_idx],
        )
        epochs_run, seconds = len(history.history["loss"]), round(time.perf_counter() - started, 1)
        if save_to is not None:
            from cxr_core.modelling.networks import save_model

            save_model(model, save_to)

    def predict(indices: np.ndarray) -> np.ndarray:
        return _predict(model, images[indices])

    threshold, _ = choose_operating_threshold(labels[val_idx], predict(val_idx), params["threshold"])
    result = {
        "threshold": round(float(threshold), 6),
        "epochs_run": epochs_run,
        "train_seconds": seconds,
        "train_images": int(len(train_idx)),
        "val_images": int(len(val_idx)),
        "test": {name: _scores(labels[idx], predict(idx), threshold, n_boot) for name, idx in tests.items()},
    }
    if extras is not None:
        shortcut = fit_shortcut(extras["thumbs"][train_idx], labels[train_idx], int(params["seed"]))
        result["shortcut_auc"] = {
            name: auc_or_none(labels[idx], shortcut_scores(shortcut, extras["thumbs"][idx]))
            for name, idx in tests.items()
        }
        if extras["available"]:
            lesion_idx = np.flatnonzero([str(row.get("lesion_test")) == "1" for row in rows])
            result["evidence"] = {
                name: evidence_by_class(model, images, labels, rows, extras, idx) for name, idx in tests.items()
            }
            result["evidence"]["lesion_test"] = evidence_by_class(model, images, labels, rows, extras, lesion_idx)
    keras.backend.clear_session()  # a fold's graph must not pile up in memory over a dozen folds
    return result


def evidence_by_class(model, images, labels, rows, extras: dict, indices: np.ndarray) -> dict:
    """Where the model's Grad-CAM lies on ``indices`` films, per class (TB, Normal), as means."""
    from cxr_core.modelling.evidence import film_evidence, outer_band_share_in_film, summarise_evidence
    from cxr_core.modelling.gradcam import GradCam
    from cxr_core.pipeline.ingest import lesion_masks

    if len(indices) == 0:
        return {}
    cam = GradCam(model)
    side = images.shape[1]
    per_class: dict[str, list[dict]] = {"Tuberculosis": [], "Normal": []}
    for start in range(0, len(indices), 128):
        chunk = indices[start : start + 128]
        raw = cam(images[chunk]).raw
        boxes = lesion_masks([rows[i] for i in chunk], side)
        for position, i in enumerate(chunk):
            film = film_evidence(raw[position], extras["masks"][i, ..., 1], boxes[position])
            film["outer_band"] = _outer_band(raw[position], rows[i], outer_band_share_in_film)
            per_class["Tuberculosis" if labels[i] == 1 else "Normal"].append(film)
    return {name: summarise_evidence(films) for name, films in per_class.items() if films}


def _outer_band(raw, row: dict, measure) -> float | None:
    from cxr_core.imaging.preprocess import CropBox

    try:
        box = CropBox(*(int(row[k]) for k in ("box_top", "box_left", "box_bottom", "box_right")))
        return measure(raw, box, (int(row["height"]), int(row["width"])))
    except (KeyError, TypeError, ValueError):
        return None


def _predict(model, images: np.ndarray) -> np.ndarray:
    """Eager batches: ``model.predict`` would retrace its function for every fold's last batch size."""
    parts = [model(images[i : i + 256].astype(np.float32), training=False).numpy()[:, 0]
             for i in range(0, len(images), 256)]  # fmt: skip
    return np.concatenate(parts) if parts else np.empty(0, np.float32)


def run_loso(
    ingest_dir: str | Path,
    out_dir: str | Path | None = None,
    train_params: dict | None = None,
    *,
    recipe: str = "shipped",
    seeds: list[int] | tuple[int, ...] = (0, 1, 2),
    holdouts: list[str] | None = None,
    within: bool = True,
    n_boot: int = 1000,
    save_models: bool = False,
    resume: bool = False,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Run every LOSO fold (and the within-source split) for every seed; write ``loso.json``."""
    from cxr_core.pipeline.ingest import load_extras

    recipe_params = settings.with_recipe(train_params, recipe)
    images, labels, rows = load_ingested(ingest_dir)
    identity = ingest_identity(ingest_dir, rows)
    extras = load_extras(ingest_dir, rows)
    models_dir = Path(out_dir) / "models" if (out_dir is not None and save_models) else None
    sources = two_class_sources(rows)
    holdouts = list(holdouts) if holdouts else sources
    if not sources:  # nothing can be held out or compared: say so instead of training for nothing
        within = False
    runs = []
    total = len(seeds) * (len(holdouts) + int(within))
    for seed in seeds:
        params = {**recipe_params, "seed": int(seed)}
        for holdout in holdouts:
            fold = holdout_split(rows, holdout)
            run = _fit_and_score(
                images, labels, rows, fold["train"], fold["val"], {holdout: fold["test"]}, params, n_boot,
                extras, models_dir / f"loso-{holdout}-s{seed}.keras" if models_dir else None, resume,
            )  # fmt: skip
            runs.append({"kind": "loso", "holdout": holdout, "seed": int(seed),
                         "excluded_duplicates": int(len(fold["excluded"])), **run})  # fmt: skip
            _report(progress, runs, total, out_dir)
        if within:
            split = within_source_split(rows, sources)
            tests = {key[5:]: idx for key, idx in split.items() if key.startswith("test:")}
            run = _fit_and_score(
                images, labels, rows, split["train"], split["val"], tests, params, n_boot,
                extras, models_dir / f"within-s{seed}.keras" if models_dir else None, resume,
            )  # fmt: skip
            runs.append({"kind": "within", "seed": int(seed), **run})
            _report(progress, runs, total, out_dir)
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "recipe": recipe,
        "params": recipe_params,
        "seeds": [int(s) for s in seeds],
        "ingest": identity,
        "two_class_sources": sources,
        "summary": summarise(runs),
        "runs": runs,
    }
    if not sources:
        report["note"] = "no source supplies both classes, so no hospital can be held out"
    if out_dir is not None:
        write_json_atomic(Path(out_dir) / REPORT_FILE, report)
    return report


SPLIT_COLUMNS = ("md5", "label", "source", "split", "group", "box_top", "box_left", "box_bottom", "box_right")


def ingest_identity(ingest_dir: str | Path, rows: list[dict]) -> dict:
    """What makes two ingests the same films, split and cropped alike: the data's fingerprint and the
    preprocessing (lung model version and sha256, margin, side) from the ingest's summary, and a hash of
    each film's content, split, duplicate group and crop box (another split seed leaves the counts per
    source and class unchanged, so counts alone cannot tell two splits apart). ``rows`` are the ingest's
    manifest rows as :func:`load_ingested` read them (every film is in one of its three splits)."""
    summary = json.loads((Path(ingest_dir) / Layout.SUMMARY).read_text())
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: (r["md5"], r.get("member") or "", r["path"])):
        digest.update(("\t".join(str(row.get(column, "")) for column in SPLIT_COLUMNS) + "\n").encode())
    return {**{key: summary.get(key) for key in ("data_fingerprint", "preprocessing", "side")},
            "films_splits_crops_sha256": digest.hexdigest()}  # fmt: skip


def merge_reports(reports: list[dict]) -> dict:
    """One report from runs of the same recipe made apart (seeds run in different sessions or machines).

    A recipe's seeds take hours on a CPU and are often finished another day; the figures only count as
    "mean over seeds" if every part trained the same recipe with the same settings on the same films,
    so anything else is refused rather than averaged.
    """
    from cxr_core.errors import CxrError

    if len(reports) < 2:
        raise CxrError("give at least two loso.json reports to merge")
    first = reports[0]
    for key in ("recipe", "params", "two_class_sources"):
        for other in reports[1:]:
            if _as_trained(other, key) != _as_trained(first, key):
                raise CxrError(f"the reports differ in {key}: they are not runs of one recipe on one ingest")
    identities = [report.get("ingest") for report in reports]
    known = [identity for identity in identities if identity]  # reports older than this field lack it
    for key in sorted({key for identity in known for key in identity}):
        if len({json.dumps(identity.get(key), sort_keys=True) for identity in known}) > 1:
            raise CxrError(f"the reports were made on different ingests ({key} differs): not the same films, splits or crops")
    runs = [run for report in reports for run in report["runs"]]
    seen, films = set(), {}
    for run in runs:
        key = (run["kind"], run.get("holdout"), run["seed"])
        if key in seen:
            fold = f"held-out {run['holdout']}" if run.get("holdout") else "within-source"
            raise CxrError(f"the {fold} run of seed {run['seed']} is in two reports")
        seen.add(key)
        for name, result in run["test"].items():
            count = (result["n"], result["n_tb"])
            known_count = films.setdefault((run["kind"], name), count)
            if known_count != count:
                raise CxrError(
                    f"the {run['kind']} test films of {name} differ between the reports ({known_count[0]} films, "
                    f"{known_count[1]} TB against {count[0]}, {count[1]}): not the same ingest"
                )
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "recipe": first["recipe"],
        "params": first["params"],
        "seeds": sorted({int(run["seed"]) for run in runs}),
        # an identity only when every part had one: a part without it was not checked against the others
        "ingest": known[0] if known and len(known) == len(reports) else None,
        "two_class_sources": first["two_class_sources"],
        "merged_from": [{"created": r.get("created"), "seeds": r.get("seeds"), "ingest": r.get("ingest")}
                        for r in reports],  # fmt: skip
        "summary": summarise(runs),
        "runs": runs,
    }


def _report(progress, runs: list[dict], total: int, out_dir=None) -> None:
    last = runs[-1]
    if out_dir is not None:  # a run of a dozen trainings takes an hour: what is done can be read meanwhile
        write_json_atomic(Path(out_dir) / "loso.partial.json", {"done": len(runs), "total": total, "runs": runs})
    event = {"stage": "loso", "done": len(runs), "total": total, "kind": last["kind"],
             "holdout": last.get("holdout"), "seed": last["seed"],
             "roc_auc": {name: res["roc_auc"] for name, res in last["test"].items()}}  # fmt: skip
    print(event, flush=True)
    if progress:
        progress(event)


# What a report trained with when it was written before these settings existed: their defaults then.
SETTINGS_ADDED_SINCE = {"markers": 0.0, "marker_fonts": "simplex", "marker_consistency": 0.0}


def _as_trained(report: dict, key: str):
    """A report's ``key`` as its runs trained: reports written before a training setting existed lack
    its key and trained as its off value says, so they still merge with new runs of the same recipe."""
    value = report.get(key)
    if key != "params" or not isinstance(value, dict) or not isinstance(value.get("augment"), dict):
        return value
    return {**value, "augment": {**SETTINGS_ADDED_SINCE, **value["augment"]}}


def summarise(runs: list[dict]) -> dict:
    """Per held-out source (and per within-source test): mean and range over seeds; and under
    ``lesion_test`` (per kind of run) where the evidence lay on the lesion test set."""

    def spread(values: list[float | None]) -> dict | None:
        values = [v for v in values if v is not None]
        if not values:
            return None
        return {"mean": round(float(np.mean(values)), 4), "min": round(float(np.min(values)), 4),
                "max": round(float(np.max(values)), 4), "n": len(values)}  # fmt: skip

    table: dict[str, dict] = {}
    for kind in ("loso", "within"):
        names = sorted({name for run in runs if run["kind"] == kind for name in run["test"]})
        for name in names:
            results = [run["test"][name] for run in runs if run["kind"] == kind and name in run["test"]]
            seconds = [run["train_seconds"] for run in runs if run["kind"] == kind and name in run["test"]]
            chosen = [run for run in runs if run["kind"] == kind and name in run["test"]]
            table.setdefault(kind, {})[name] = {
                "roc_auc": spread([r["roc_auc"] for r in results]),
                "sensitivity": spread([r["sensitivity"] for r in results]),
                "specificity": spread([r["specificity"] for r in results]),
                "n": results[0]["n"],
                "n_tb": results[0]["n_tb"],
                "train_seconds": spread(seconds),
                "shortcut_auc": spread([(run.get("shortcut_auc") or {}).get(name) for run in chosen]),
                "evidence_tb": _evidence_spread(chosen, name, "Tuberculosis", spread),
                "evidence_normal": _evidence_spread(chosen, name, "Normal", spread),
            }
        lesion_runs = [run for run in runs if run["kind"] == kind]
        if any((run.get("evidence") or {}).get("lesion_test") for run in lesion_runs):
            table.setdefault("lesion_test", {})[kind] = {
                "evidence_tb": _evidence_spread(lesion_runs, "lesion_test", "Tuberculosis", spread)
            }
    return table


EVIDENCE_KEYS = ("lung_share", "peak_in_lungs", "outer_band", "lesion_share", "uniform_share", "pointing",
                 "lesion_vs_uniform")  # fmt: skip


def _evidence_spread(runs: list[dict], name: str, klass: str, spread) -> dict | None:
    """Mean and range over seeds of each evidence figure of one test set and class."""
    found = [((run.get("evidence") or {}).get(name) or {}).get(klass) or {} for run in runs]
    table = {key: spread([f.get(key) for f in found]) for key in EVIDENCE_KEYS}
    table = {key: value for key, value in table.items() if value is not None}
    return table or None
