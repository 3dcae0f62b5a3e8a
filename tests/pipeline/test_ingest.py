"""Stage 1, ingest, on real X-rays: manifest, skipped files, duplicates, splits, shards, atomic output.

One module-scoped ingest of a real Kaggle-layout dataset (plus injected duplicates and bad files) backs
most tests; the rest run small ingests of their own (a failure mid-way, a one-class dataset) or call
``group_duplicates`` / ``assign_splits`` directly.
"""

import csv
import hashlib
import io
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageDraw

from cxr_core.errors import DatasetError
from cxr_core.imaging.decode import read_image
from cxr_core.imaging.preprocess import preprocess
from cxr_core.pipeline import ingest
from cxr_core.pipeline.ingest import assign_splits, group_duplicates, load_split, run_ingest
from cxr_core.settings import defaults

DEFAULTS = defaults("ingest")

# Two different patients (a Normal and a TB image) whose perceptual hashes are within 4 bits: a pure
# "phash <= 4" rule merged them on the development set.
LOOKALIKE_NORMAL = "openist/Normal/263-272-500-500-100.png"
LOOKALIKE_TB = "tbx11k/Tuberculosis/tb1022.png"

# Small chunks so the dataset spans several shards and load_split must gather across them.
PARAMS = {
    "seed": 42,
    "chunk_size": 16,
    "workers": 2,
    "lung_crop": False,
}  # whole films: the look-alike pair is about them
BAD_FILES = {
    "Normal/corrupt.png": ("corrupt", "truncated"),
    "Normal/notes.png": ("not an image", "text"),
    "Normal/holiday.png": ("colour photograph",),
}


def _colour_photo() -> bytes:
    """A synthetic holiday snapshot: blue sky, green grass, sun and a red house."""
    scene = Image.new("RGB", (640, 480))
    draw = ImageDraw.Draw(scene)
    for y in range(300):
        draw.line([(0, y), (640, y)], fill=(100 + y // 3, 150 + y // 4, 255))
    draw.rectangle([0, 300, 640, 480], fill=(40, 160, 40))
    draw.ellipse([480, 40, 580, 140], fill=(255, 230, 50))
    draw.rectangle([150, 200, 350, 380], fill=(180, 60, 40))
    draw.polygon([(130, 200), (250, 110), (370, 200)], fill=(90, 40, 30))
    buffer = io.BytesIO()
    scene.save(buffer, format="PNG")
    return buffer.getvalue()


def _near_copy(path: Path, dest: Path) -> None:
    """The same radiograph cropped by a few pixels, resized to 400x400 and re-encoded as JPEG q=70."""
    image = Image.open(path).convert("L")
    width, height = image.size
    image.crop((4, 4, width - 4, height - 4)).resize((400, 400), Image.LANCZOS).save(
        dest, format="JPEG", quality=70
    )


def _corrupt_png(path: Path, dest: Path) -> None:
    """A PNG with 2000 bytes in the middle of its image data overwritten (same length, bad content)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = b"\x00" * 2000
    dest.write_bytes(bytes(data))


def _rel(path: str, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, kaggle_tree, shared_cxr) -> dict:
    """A copy of the Kaggle tree plus an exact copy, a near copy, two look-alikes and three bad files."""
    root = tmp_path_factory.mktemp("ingest-data") / "TB_Chest_Radiography_Database"
    shutil.copytree(kaggle_tree, root)
    normal, tb = root / "Normal", root / "Tuberculosis"
    shutil.copy(tb / "Tuberculosis-3.png", tb / "zz-exact-copy.png")
    _near_copy(tb / "Tuberculosis-7.png", tb / "rescan.jpg")
    shutil.copy(shared_cxr / LOOKALIKE_NORMAL, normal / "lookalike-normal.png")
    shutil.copy(shared_cxr / LOOKALIKE_TB, tb / "lookalike-tb.png")
    _corrupt_png(normal / "Normal-2.png", normal / "corrupt.png")
    (normal / "notes.png").write_text("Patient list\nname,age\nDoe,42\n")
    (normal / "holiday.png").write_bytes(_colour_photo())
    files = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    good = sorted(name for name in files if name not in BAD_FILES)
    return {"root": root, "good": good}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, dataset) -> dict:
    out = tmp_path_factory.mktemp("ingest-out") / "ingest"
    progress: list[dict] = []
    summary = run_ingest(dataset["root"], out, PARAMS, progress=progress.append)
    rows = _read_csv(out / "manifest.csv")
    by_name = {_rel(row["path"], dataset["root"]): row for row in rows}
    return {"out": out, "summary": summary, "rows": rows, "by_name": by_name, "progress": progress}


# ------------------------------------------------------------------------------------------ manifest


def test_manifest_lists_every_good_image_exactly_once(dataset, ingested):
    names = [_rel(row["path"], dataset["root"]) for row in ingested["rows"]]
    assert len(names) == len(set(names)), "an image appears twice in the manifest"
    assert sorted(names) == dataset["good"]
    assert [int(row["index"]) for row in ingested["rows"]] == list(range(len(names)))
    for name, row in ingested["by_name"].items():
        assert int(row["label"]) == (1 if name.startswith("Tuberculosis/") else 0), name
        assert row["md5"] == hashlib.md5((dataset["root"] / name).read_bytes()).hexdigest()
    rescan = ingested["by_name"]["Tuberculosis/rescan.jpg"]
    assert (rescan["format"], rescan["width"], rescan["height"]) == ("JPEG", "400", "400")
    summary = ingested["summary"]
    assert summary["layout"] == "kaggle"
    assert summary["images"] == len(names) and summary["skipped"] == len(BAD_FILES)
    files = len(names) + len(BAD_FILES)
    assert ingested["progress"][-1] == {"stage": "ingest", "done": files, "total": files}


def test_skipped_lists_bad_files_with_readable_reasons(dataset, ingested):
    skipped = _read_csv(ingested["out"] / "skipped.csv")
    reasons = {_rel(row["path"], dataset["root"]): row["reason"] for row in skipped}
    assert set(reasons) == set(BAD_FILES)
    for name, words in BAD_FILES.items():
        reason = reasons[name]
        assert any(word in reason.lower() for word in words), f"{name}: {reason!r}"
        assert "Traceback" not in reason and "Error" not in reason and len(reason) < 200, reason


# ------------------------------------------------------------------------------------------ duplicates


def test_duplicates_share_one_group_and_one_split(ingested):
    by_name = ingested["by_name"]
    for original, copy in (
        ("Tuberculosis/Tuberculosis-3.png", "Tuberculosis/zz-exact-copy.png"),
        ("Tuberculosis/Tuberculosis-7.png", "Tuberculosis/rescan.jpg"),
    ):
        assert by_name[original]["group"] == by_name[copy]["group"], copy
        assert by_name[original]["split"] == by_name[copy]["split"], copy
    assert ingested["summary"]["duplicates"] == {"exact": 1, "near": 1, "groups_with_conflicting_labels": 0}
    # Only those two pairs are merged: every other image is a group of its own.
    sizes = Counter(row["group"] for row in ingested["rows"])
    assert sorted(sizes.values(), reverse=True)[:3] == [2, 2, 1]
    # And no group straddles splits.
    splits_by_group = defaultdict(set)
    for row in ingested["rows"]:
        splits_by_group[row["group"]].add(row["split"])
    assert all(len(splits) == 1 for splits in splits_by_group.values())


def test_lookalike_xrays_of_different_patients_stay_separate(ingested):
    normal = ingested["by_name"]["Normal/lookalike-normal.png"]
    tb = ingested["by_name"]["Tuberculosis/lookalike-tb.png"]
    distance = bin(int(normal["phash"], 16) ^ int(tb["phash"], 16)).count("1")
    assert distance <= DEFAULTS["near_duplicate_bits"], "precondition: the hash alone would pair them"
    assert normal["group"] != tb["group"]


def test_group_duplicates_needs_pixel_confirmation_for_a_hash_match(shared_cxr):
    """The real look-alike pair through group_duplicates directly: the correlation check is what splits them."""
    images, rows = [], []
    for path, label in ((LOOKALIKE_NORMAL, 0), (LOOKALIKE_TB, 1)):
        data = (shared_cxr / path).read_bytes()
        small = preprocess(read_image(data).pixels, 128)
        images.append(small)
        rows.append(
            {
                "label": label,
                "md5": hashlib.md5(data).hexdigest(),
                "phash": str(imagehash.phash(Image.fromarray(small))),
            }
        )
    image_of = {id(row): image for row, image in zip(rows, images, strict=True)}

    groups, counts = group_duplicates(
        rows,
        DEFAULTS["near_duplicate_bits"],
        DEFAULTS["near_duplicate_correlation"],
        lambda r: image_of[id(r)],
    )
    assert groups == [0, 1] and counts["near"] == 0
    # With the pixel check relaxed to what these two actually reach, the hash pairing would go through,
    # so the test above fails if the correlation confirmation is ever dropped.
    loose = [dict(r) for r in rows]
    image_of.update({id(row): image for row, image in zip(loose, images, strict=True)})
    groups, counts = group_duplicates(loose, DEFAULTS["near_duplicate_bits"], 0.5, lambda r: image_of[id(r)])
    assert groups == [0, 0] and counts == {"exact": 0, "near": 1, "groups_with_conflicting_labels": 1}


def test_group_duplicates_merges_same_bytes_even_when_pixels_disagree():
    """Exact duplicates are found by MD5 alone, independently of the perceptual-hash path."""
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (128, 128), dtype=np.uint8) for _ in range(3)]
    rows = [
        {"label": 1, "md5": "a" * 32, "phash": "0000000000000000", "picture": 0},
        {"label": 0, "md5": "b" * 32, "phash": "00000000ffffffff", "picture": 1},
        {"label": 1, "md5": "a" * 32, "phash": "ffffffffffffffff", "picture": 2},
    ]
    groups, counts = group_duplicates(rows, 10, 0.95, lambda r: pictures[r["picture"]])
    assert groups == [0, 1, 0]
    assert [row["group"] for row in rows] == groups
    assert counts == {"exact": 1, "near": 0, "groups_with_conflicting_labels": 0}


# ------------------------------------------------------------------------------------------ splits


def test_splits_are_stratified_by_label(ingested):
    rows = ingested["rows"]
    for split in ("train", "val", "test"):
        labels = {row["label"] for row in rows if row["split"] == split}
        assert labels == {"0", "1"}, f"{split} has labels {labels}"
    # Per label, the share of duplicate groups in test/val is the configured fraction (within rounding).
    groups = {(row["group"], row["label"], row["split"]) for row in rows}
    for label in ("0", "1"):
        per_split = Counter(split for _, lab, split in groups if lab == label)
        total = sum(per_split.values())
        assert abs(per_split["test"] - DEFAULTS["test_fraction"] * total) <= 1, per_split
        assert abs(per_split["val"] - DEFAULTS["val_fraction"] * total) <= 1, per_split
        assert per_split["train"] > per_split["test"] + per_split["val"], per_split


def test_same_seed_gives_the_same_output_and_another_seed_another_split(tmp_path, dataset, ingested):
    run_ingest(dataset["root"], tmp_path / "again", PARAMS)
    assert (tmp_path / "again" / "manifest.csv").read_bytes() == (
        ingested["out"] / "manifest.csv"
    ).read_bytes()
    first = sorted((ingested["out"] / "shards").iterdir())
    again = sorted((tmp_path / "again" / "shards").iterdir())
    assert [p.name for p in first] == [p.name for p in again]
    assert all(np.array_equal(np.load(a), np.load(b)) for a, b in zip(first, again, strict=True))

    run_ingest(dataset["root"], tmp_path / "other", {**PARAMS, "seed": 7})
    other = _read_csv(tmp_path / "other" / "manifest.csv")
    assert [r["path"] for r in other] == [r["path"] for r in ingested["rows"]]
    assert [r["group"] for r in other] == [r["group"] for r in ingested["rows"]], (
        "grouping must not depend on the seed"
    )
    assert [r["split"] for r in other] != [r["split"] for r in ingested["rows"]]
    split_sizes = [
        Counter(r["split"] for r in {r["group"]: r for r in rows}.values())
        for rows in (other, ingested["rows"])
    ]
    assert split_sizes[0] == split_sizes[1], "the same number of groups per split, just different ones"


def test_assign_splits_is_a_pure_function_of_the_seed(ingested):
    """assign_splits on the manifest's own groups reproduces the manifest and is seed-sensitive."""

    def split_with(seed: int) -> list[str]:
        rows = [{**row, "label": int(row["label"])} for row in ingested["rows"]]
        groups = [int(row["group"]) for row in rows]
        assign_splits(rows, groups, {**DEFAULTS, "seed": seed})
        return [row["split"] for row in rows]

    assert split_with(42) == [row["split"] for row in ingested["rows"]]
    assert split_with(42) == split_with(42)
    assert split_with(1) != split_with(42)


# ------------------------------------------------------------------------------------------ shards


def test_shards_are_uint8_and_cover_every_manifest_row_once(ingested):
    out, rows = ingested["out"], ingested["rows"]
    shards = {p.name: np.load(p) for p in sorted((out / "shards").glob("*.npy"))}
    assert len(shards) > 1, "the dataset should span several shards with chunk_size=16"
    for name, array in shards.items():
        assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[1:] == (128, 128), name
    assert sum(len(a) for a in shards.values()) == len(rows)
    places = [(row["shard"], int(row["offset"])) for row in rows]
    assert len(set(places)) == len(rows)
    assert all(offset < len(shards[shard]) for shard, offset in places)


def test_load_split_returns_the_right_pixels_and_labels(ingested):
    """The shards hold exactly what the one input path makes of each file (lung check and crop included)."""
    from functools import partial

    from cxr_core.imaging.preprocess import model_input_from_image
    from cxr_core.modelling.lungs import load_lung_model

    settings_used = json.loads((ingested["out"] / "summary.json").read_text())["preprocessing"]
    prepare = partial(model_input_from_image, lungs=load_lung_model(), crop_to_lungs=settings_used["lung_crop"],
                      lung_margin=settings_used["lung_margin"], mask_to_lungs=settings_used["lung_mask"])  # fmt: skip
    total = 0
    for split in ("train", "val", "test"):
        images, labels, rows = load_split(ingested["out"], split)
        expected = [r for r in ingested["rows"] if r["split"] == split]
        assert images.shape == (len(expected), 128, 128, 1) and images.dtype == np.uint8
        assert labels.dtype == np.int32 and labels.tolist() == [int(r["label"]) for r in expected]
        assert [r["path"] for r in rows] == [r["path"] for r in expected]
        for image, row in zip(images, rows, strict=True):
            np.testing.assert_array_equal(image[..., 0], prepare(read_image(row["path"])).pixels)
        total += len(rows)
    assert total == len(ingested["rows"])


# ------------------------------------------------------------------------------------------ failures


@pytest.mark.parametrize("present", ["Normal", "Tuberculosis"])
def test_a_one_class_dataset_is_refused_with_a_clear_message(tmp_path, kaggle_tree, present):
    root = tmp_path / "data"
    (root / present).mkdir(parents=True)
    for source in sorted((kaggle_tree / present).iterdir())[:4]:
        shutil.copy(source, root / present / source.name)
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as caught:
        run_ingest(root, out, PARAMS)
    message = str(caught.value)
    assert "both Normal and Tuberculosis" in message and f"found only {present}" in message
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"], "no staging folder may be left behind"


def _fail(*args, **kwargs):
    raise RuntimeError("simulated crash")


def test_a_crash_mid_ingest_leaves_no_output(tmp_path, monkeypatch, dataset):
    monkeypatch.setattr(ingest, "write_json_atomic", _fail)  # the very last write, after shards and CSVs
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_ingest(dataset["root"], tmp_path / "ingest", PARAMS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("step", ["group_duplicates", "write_json_atomic"])
def test_a_crash_mid_ingest_keeps_the_previous_output(tmp_path, monkeypatch, dataset, ingested, step):
    previous = tmp_path / "ingest"
    shutil.copytree(ingested["out"], previous)
    before = _tree_digest(previous)
    monkeypatch.setattr(ingest, step, _fail)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_ingest(dataset["root"], previous, {**PARAMS, "seed": 7})
    assert _tree_digest(previous) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ingest"], "no staging or retired folder may be left"
    # The untouched previous output is still a complete, loadable ingest.
    images, labels, _ = load_split(previous, "test")
    assert len(images) == len(labels) > 0


def test_a_second_ingest_takes_the_lung_fields_from_the_cache_and_makes_the_same_shards(
    tmp_path, monkeypatch, kaggle_tree
):
    """The lung network runs once per film: a second ingest (another split seed) reads its outputs
    back by content and writes identical pixels and masks; a cache of another lung model is not read."""
    monkeypatch.setenv("CXR_LUNG_CACHE_DIR", str(tmp_path / "cache"))
    params = {**PARAMS, "lung_crop": True, "lung_cache": True}
    first = run_ingest(kaggle_tree, tmp_path / "first", params)
    again = run_ingest(kaggle_tree, tmp_path / "again", {**params, "seed": 7})
    films = first["images"]
    assert first["lung_cache"] == {"hits": 0, "misses": films}
    assert again["lung_cache"] == {"hits": films, "misses": 0}
    (model_folder,) = (tmp_path / "cache").iterdir()
    assert len(list(model_folder.glob("*.npy"))) == films
    for folder in ("shards", "masks"):
        for shard in sorted((tmp_path / "first" / folder).iterdir()):
            assert np.array_equal(np.load(shard), np.load(tmp_path / "again" / folder / shard.name)), shard
    model_folder.rename(tmp_path / "cache" / "another-lung-model")
    third = run_ingest(kaggle_tree, tmp_path / "third", params)
    assert third["lung_cache"] == {"hits": 0, "misses": films}
