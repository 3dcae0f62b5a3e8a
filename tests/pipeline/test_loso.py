"""Leave-one-source-out: the held-out hospital (and its duplicates elsewhere) never reaches training."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import PROJECT_ROOT, shared_records

from cxr_core.errors import CxrError
from cxr_core.pipeline.ingest import run_ingest
from cxr_core.pipeline.loso import (
    holdout_split,
    load_ingested,
    merge_reports,
    run_loso,
    two_class_sources,
    within_source_split,
)


def _rows():
    """Manifest rows: two two-class sources, a TB-only and a normal-only one, and a cross-source duplicate."""
    rows = []
    for i in range(40):
        source = ["a", "b", "tbonly", "normalonly"][i % 4]
        label = {"tbonly": 1, "normalonly": 0}.get(source, (i // 4) % 2)
        rows.append({"source": source, "label": str(label), "split": ["train", "val", "test"][i % 3],
                     "group": str(i)})  # fmt: skip
    rows[5]["group"] = rows[4]["group"]  # a film of "b" is a re-encoded copy of a film of "a"
    return rows


def test_two_class_sources_come_from_the_data():
    assert two_class_sources(_rows(), min_per_class=1) == ["a", "b"]
    rows = _rows() + [{"source": "tbonly", "label": "0", "split": "train", "group": "x"}]  # one stray normal
    assert two_class_sources(rows, min_per_class=1) == ["a", "b", "tbonly"]
    assert two_class_sources(rows, min_per_class=2) == ["a", "b"]


@pytest.mark.parametrize("holdout", ["a", "b"])
def test_a_fold_trains_on_no_film_of_the_held_out_source_or_its_duplicate_group(holdout):
    rows = _rows()
    fold = holdout_split(rows, holdout)
    held_groups = {r["group"] for r in rows if r["source"] == holdout}
    for part in ("train", "val"):
        assert all(rows[i]["source"] != holdout for i in fold[part])
        assert not {rows[i]["group"] for i in fold[part]} & held_groups
    assert sorted(fold["test"]) == [i for i, r in enumerate(rows) if r["source"] == holdout]
    assert [rows[i]["group"] for i in fold["excluded"]] == [rows[4]["group"]]  # the copy, left out
    clean = {
        i for i, r in enumerate(rows)
        if r["source"] != holdout and r["split"] in ("train", "val") and r["group"] not in held_groups
    }  # fmt: skip
    assert set(fold["train"]) | set(fold["val"]) == clean  # nothing else is lost
    with pytest.raises(ValueError, match="no films of source"):
        holdout_split(rows, "nowhere")


def test_within_source_split_tests_each_two_class_source_on_its_own_test_films():
    rows = _rows()
    split = within_source_split(rows, ["a", "b"])
    assert set(split) == {"train", "val", "test:a", "test:b"}
    assert all(rows[i]["source"] == "a" and rows[i]["split"] == "test" for i in split["test:a"])


@pytest.fixture(scope="module")
def small_multisite(tmp_path_factory, shared_cxr):
    """A real mini dataset: 20 films of each two-class source, 16 TBX11K TB, 16 teaching-set normals."""
    root = tmp_path_factory.mktemp("multisite")
    picked = []
    for source in ("shenzhen", "da", "rahmandb"):
        for label in ("Normal", "Tuberculosis"):
            picked += shared_records(source, label)[:10]
    picked += shared_records("tbx11k", "Tuberculosis")[:16] + shared_records("openist", "Normal")[:16]
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "source"])
        for row in picked:
            name = row["path"].replace("/", "_")
            shutil.copy(shared_cxr / row["path"], root / name)
            writer.writerow([name, row["label"], row["source"]])
    ingest = tmp_path_factory.mktemp("ingest") / "ingest"
    run_ingest(root, ingest, {"val_fraction": 0.25, "test_fraction": 0.25})
    return ingest


@pytest.mark.slow
def test_loso_on_real_films_writes_a_report_per_held_out_source(small_multisite, tmp_path):
    images, labels, rows = load_ingested(small_multisite)
    assert len(images) == len(labels) == len(rows) == 92
    params = {"epochs": 1, "patience": 1, "model": {"filters": [8, 16, 16, 16, 16]}}
    report = run_loso(small_multisite, tmp_path, params, seeds=[0], holdouts=["da"], n_boot=20)
    assert json.loads((tmp_path / "loso.json").read_text())["summary"] == report["summary"]
    assert report["two_class_sources"] == ["da", "rahmandb", "shenzhen"]
    loso_run, within_run = report["runs"]
    assert loso_run["kind"] == "loso" and loso_run["holdout"] == "da"
    assert loso_run["test"]["da"]["n"] == 20 and loso_run["test"]["da"]["n_tb"] == 10
    # Exactly the films of the fold with "da" removed: had any of da's 20 films (or a duplicate of one)
    # reached train or val, these counts would differ; a "<= 92 - 20" bound could not see that.
    fold = holdout_split(rows, "da")
    da_in_train_or_val = [i for i, r in enumerate(rows) if r["source"] == "da" and r["split"] in ("train", "val")]
    assert da_in_train_or_val, "precondition: some da films sit in the train/val split a leak would use"
    assert (loso_run["train_images"], loso_run["val_images"]) == (len(fold["train"]), len(fold["val"]))
    assert set(within_run["test"]) == {"da", "rahmandb", "shenzhen"}
    assert 0.0 <= report["summary"]["loso"]["da"]["roc_auc"]["mean"] <= 1.0
    assert np.isfinite(loso_run["threshold"])


@pytest.mark.slow
def test_seeds_run_apart_merge_into_one_report_and_only_runs_of_one_recipe_do(small_multisite, tmp_path):
    """Seed 0 one day, seed 1 the next: the merged report is what one run of both seeds would say."""
    tiny = {"epochs": 1, "patience": 1, "model": {"filters": [8, 16, 16, 16, 16]}}
    reports = []
    for seed in (0, 1):
        run_loso(small_multisite, tmp_path / f"s{seed}", tiny, seeds=[seed], holdouts=["da"], within=False, n_boot=20)
        reports.append(tmp_path / f"s{seed}" / "loso.json")
    done = _cli("loso", "--merge", *map(str, reports), "--out", str(tmp_path / "merged"))
    assert done.returncode == 0, done.stderr
    merged = json.loads((tmp_path / "merged" / "loso.json").read_text())
    parts = [json.loads(path.read_text()) for path in reports]
    assert merged["seeds"] == [0, 1]
    assert merged["runs"] == parts[0]["runs"] + parts[1]["runs"]
    auc = merged["summary"]["loso"]["da"]["roc_auc"]
    each = [part["runs"][0]["test"]["da"]["roc_auc"] for part in parts]
    assert auc["n"] == 2 and auc["mean"] == pytest.approx(np.mean(each), abs=1e-4)
    assert (auc["min"], auc["max"]) == (round(min(each), 4), round(max(each), 4))

    assert merged["ingest"] == parts[0]["ingest"] == parts[1]["ingest"]
    assert merged["ingest"]["data_fingerprint"] == json.loads((small_multisite / "summary.json").read_text())["data_fingerprint"]

    # Parts that are not runs of one recipe on one ingest are refused, each with its reason.
    a, b = parts
    resplit = {**b["ingest"], "films_splits_crops_sha256": "0" * 64}  # same films and counts, another split
    fewer_films = json.loads(json.dumps(b))
    fewer_films["runs"][0]["test"]["da"]["n"] -= 1
    for other, reason in (
        (a, "held-out da run of seed 0 is in two reports"),
        ({**b, "recipe": "reference"}, "differ in recipe"),
        ({**b, "params": {**b["params"], "epochs": 2}}, "differ in params"),
        ({**b, "two_class_sources": ["da"]}, "differ in two_class_sources"),
        ({**b, "ingest": resplit}, "films_splits_crops_sha256 differs"),
        ({**b, "ingest": {**b["ingest"], "preprocessing": {"lung_crop": False}}}, "preprocessing differs"),
        (fewer_films, "test films of da differ"),
    ):
        with pytest.raises(CxrError, match=reason):
            merge_reports([a, other])
    # a part without the ingest field (reports before it) merges, but the result claims no checked identity
    assert merge_reports([a, {**b, "ingest": None}])["ingest"] is None
    # a part from before a training setting existed (markers, their fonts, the consistency loss) trained
    # with it off: it merges with a part that says so, and not with one that trained with it on
    def with_setting(report, key, value):
        copy = json.loads(json.dumps(report))
        copy["params"]["augment"].pop(key, None)
        if value is not None:
            copy["params"]["augment"][key] = value
        return copy

    for key, off, on in (("markers", 0.0, 0.5), ("marker_fonts", "simplex", "varied"),
                         ("marker_consistency", 0.0, 1.0)):  # fmt: skip
        assert merge_reports([with_setting(a, key, off), with_setting(b, key, None)])["seeds"] == [0, 1]
        with pytest.raises(CxrError, match="differ in params"):
            merge_reports([with_setting(a, key, on), with_setting(b, key, None)])

    # The command: a missing, damaged or unfinished file, or a risky --out, exits 2 with the reason, writes nothing.
    (tmp_path / "damaged.json").write_text('{"runs": [')
    (tmp_path / "loso.partial.json").write_text(json.dumps({"done": 1, "total": 3, "runs": a["runs"]}))
    for given, reason in (
        ([reports[0], tmp_path / "absent.json", "--out", tmp_path / "refused"], "cannot read"),
        ([reports[0], tmp_path / "damaged.json", "--out", tmp_path / "refused"], "is not a JSON report"),
        ([reports[0], tmp_path / "loso.partial.json", "--out", tmp_path / "refused"], "not a finished loso.json"),
        ([*reports], "--merge needs --out"),
        ([*reports, "--out", reports[0].parent], "would overwrite one of the reports"),
        ([*reports, "--out", tmp_path / "refused", "--holdout", "da"], "--holdout would be ignored"),
    ):
        refused = _cli("loso", "--merge", *map(str, given))
        assert refused.returncode == 2 and reason in refused.stderr, refused.stderr
        assert not (tmp_path / "refused" / "loso.json").exists()
    assert json.loads(reports[0].read_text()) == a  # the input --out pointed at is untouched


def _cli(*args: str):
    return subprocess.run(
        [sys.executable, "-m", "cxr_core", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
