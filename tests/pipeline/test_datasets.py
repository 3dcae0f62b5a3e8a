"""Dataset discovery on real X-rays laid out the ways users actually hand them over."""

import csv
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from conftest import shared_records

from cxr_core.errors import DatasetError
from cxr_core.pipeline.datasets import (
    DiscoveryResult,
    Record,
    dataset_fingerprint,
    discover,
    read_record_bytes,
)


def _copy(shared_cxr: Path, row: dict, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shared_cxr / row["path"], dest)
    return dest


def test_shared_manifest_is_discovered_with_its_sources(shared_cxr):
    result = discover(shared_cxr)
    assert isinstance(result, DiscoveryResult)
    assert result.layout == "manifest"
    assert len(result.records) == len(shared_records())
    assert result.skipped == []
    expected = Counter(r["source"] for r in shared_records())
    assert result.source_counts == dict(expected)
    assert {"tbx11k", "openist", "shenzhen", "da", "rahmandb"} <= set(result.source_counts)
    tb = sum(1 for r in shared_records() if r["label"] == "Tuberculosis")
    assert result.label_counts == {"Normal": len(shared_records()) - tb, "Tuberculosis": tb}
    assert result.records == sorted(result.records, key=lambda r: (r.path, r.member or ""))
    assert all(Path(r.path).is_file() and r.member is None for r in result.records)
    by_name = {Path(r.path).name: r for r in result.records}
    assert by_name["CHNCXR_0001_0.png"] == Record(
        str(shared_cxr / "shenzhen" / "Normal" / "CHNCXR_0001_0.png"), 0, "shenzhen"
    )


def test_kaggle_tree_fixture(kaggle_tree):
    result = discover(kaggle_tree)
    assert result.layout == "kaggle"
    n_normal = len(list((kaggle_tree / "Normal").iterdir()))
    n_tb = len(list((kaggle_tree / "Tuberculosis").iterdir()))
    assert result.label_counts == {"Normal": n_normal, "Tuberculosis": n_tb}
    assert result.source_counts == {"kaggle": n_normal + n_tb}
    # Discovering the parent (the folder the user unzipped into) finds the same images at depth.
    assert [r.path for r in discover(kaggle_tree.parent).records] == [r.path for r in result.records]


def test_kaggle_layout_at_depth_with_mixed_case_folders(tmp_path, shared_cxr):
    root = tmp_path / "download" / "TB_Chest_Radiography_Database"
    normals = shared_records("openist", "Normal")[:3]
    tbs = shared_records("tbx11k", "Tuberculosis")[:2]
    for i, row in enumerate(normals):
        _copy(shared_cxr, row, root / "NORMAL" / f"Normal-{i}.png")
    _copy(shared_cxr, tbs[0], root / "tuberculosis" / "Tuberculosis-1.png")
    _copy(shared_cxr, tbs[1], root / "Tb" / "extra" / "Tuberculosis-2.PNG")
    # An NLM image dropped into the Normal folder keeps its hospital as source.
    _copy(shared_cxr, shared_records("shenzhen")[0], root / "NORMAL" / "CHNCXR_0001_0.png")
    (root / "README.md.txt").write_text("Tuberculosis (TB) Chest X-ray Database")
    (root / "Normal.metadata.xlsx").write_bytes(b"PK\x03\x04 not really")
    (root / "NORMAL" / "notes").write_text("no extension")
    (root / "NORMAL" / ".DS_Store").write_bytes(b"\0")
    (root / "__MACOSX" / "NORMAL").mkdir(parents=True)
    (root / "__MACOSX" / "NORMAL" / "._Normal-0.png").write_bytes(b"\0")

    result = discover(tmp_path / "download")
    assert result.layout == "kaggle"
    assert result.label_counts == {"Normal": 4, "Tuberculosis": 2}
    assert result.source_counts == {"kaggle": 5, "shenzhen": 1}
    names = {Path(r.path).name: r.label for r in result.records}
    assert names["Tuberculosis-2.PNG"] == 1 and names["Normal-0.png"] == 0
    reasons = {Path(p).name: why for p, why in result.skipped}
    assert set(reasons) == {"README.md.txt", "Normal.metadata.xlsx", "notes"}
    assert "not an image" in reasons["Normal.metadata.xlsx"]
    assert "no file extension" in reasons["notes"]
    assert result.records == sorted(result.records, key=lambda r: r.path)


def test_nlm_naming(tmp_path, shared_cxr):
    root = tmp_path / "ChinaSet_AllFiles" / "CXR_png"
    for row in shared_records("shenzhen")[:3]:
        _copy(shared_cxr, row, root / Path(row["path"]).name)
    tbs = shared_records("tbx11k", "Tuberculosis")[:2]
    _copy(shared_cxr, tbs[0], root / "CHNCXR_0400_1.png")
    _copy(shared_cxr, tbs[1], tmp_path / "MontgomerySet" / "CXR_png" / "MCUCXR_0104_1.png")
    _copy(
        shared_cxr, shared_records("openist")[0], tmp_path / "MontgomerySet" / "CXR_png" / "MCUCXR_0001_0.png"
    )
    _copy(shared_cxr, shared_records("openist")[1], tmp_path / "other" / "unlabelled.png")

    result = discover(tmp_path)
    assert result.layout == "nlm"
    labels = {Path(r.path).name: (r.label, r.source) for r in result.records}
    assert labels == {
        "CHNCXR_0001_0.png": (0, "shenzhen"),
        "CHNCXR_0002_0.png": (0, "shenzhen"),
        "CHNCXR_0003_0.png": (0, "shenzhen"),
        "CHNCXR_0400_1.png": (1, "shenzhen"),
        "MCUCXR_0001_0.png": (0, "montgomery"),
        "MCUCXR_0104_1.png": (1, "montgomery"),
    }
    assert [(Path(p).name, "no label" in why) for p, why in result.skipped] == [("unlabelled.png", True)]


def test_csv_with_word_labels_and_a_missing_file(tmp_path, shared_cxr):
    normal = shared_records("openist", "Normal")[0]
    tb = shared_records("tbx11k", "Tuberculosis")[0]
    _copy(shared_cxr, normal, tmp_path / "imgs" / "a.png")
    _copy(shared_cxr, tb, tmp_path / "imgs" / "b.png")
    _copy(shared_cxr, tb, tmp_path / "imgs" / "c.jpg")  # PNG content, wrong extension: io decides by content
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Path", "Label", "Source"])
        writer.writerow(["imgs/a.png", "normal", "siteA"])
        writer.writerow(["imgs/b.png", "TB", "siteB"])
        writer.writerow(["imgs/c.jpg", "Tuberculosis", ""])
        writer.writerow(["imgs/gone.png", "NORMAL", "siteA"])
        writer.writerow(["imgs/a.png", "maybe", "siteA"])
        writer.writerow(["imgs/a.png", "0", "siteA"])
    # A second CSV without path/label columns must not make the manifest ambiguous.
    (tmp_path / "other.csv").write_text("id,comment\n1,hello\n")

    result = discover(tmp_path)
    assert result.layout == "manifest"
    got = [(Path(r.path).name, r.label, r.source) for r in result.records]
    assert got == [("a.png", 0, "siteA"), ("b.png", 1, "siteB"), ("c.jpg", 1, "unknown")]
    reasons = dict(result.skipped)
    assert "missing" in reasons["imgs/gone.png"]
    assert any("unknown label 'maybe'" in why for _, why in result.skipped)
    assert any("more than once" in why for _, why in result.skipped)
    # The CSV itself can be given as the root.
    assert discover(tmp_path / "labels.csv").records == result.records


def test_manifest_with_every_file_missing_says_so(tmp_path):
    (tmp_path / "manifest.csv").write_text("path,label\nx.png,0\ny.png,1\n")
    with pytest.raises(DatasetError, match="every file was skipped"):
        discover(tmp_path)


def test_zip_of_kaggle_tree_reads_back_identical_bytes(tmp_path, kaggle_tree):
    archive = tmp_path / "upload.zip"
    originals = {}
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(kaggle_tree.rglob("*.png")):
            member = path.relative_to(kaggle_tree.parent).as_posix()
            zf.write(path, member)
            originals[member] = path.read_bytes()
        zf.writestr("__MACOSX/TB_Chest_Radiography_Database/Normal/._Normal-1.png", b"\0")
        zf.writestr("../evil/Normal/escape.png", b"x")
        zf.writestr("TB_Chest_Radiography_Database/Normal.metadata.xlsx", b"x")

    result = discover(archive)
    assert result.layout == "kaggle"
    assert len(result.records) == len(originals)
    assert all(r.path == str(archive) and r.member in originals for r in result.records)
    assert result.label_counts == discover(kaggle_tree).label_counts
    for record in result.records:
        assert read_record_bytes(record) == originals[record.member]
    reasons = dict(result.skipped)
    assert "unsafe" in reasons[f"{archive}/../evil/Normal/escape.png"]
    assert "not an image" in reasons[f"{archive}/TB_Chest_Radiography_Database/Normal.metadata.xlsx"]
    # The same images zipped are the same data.
    assert dataset_fingerprint(result.records) == dataset_fingerprint(discover(kaggle_tree).records)
    # Nothing was extracted next to the archive.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload.zip"]


def test_zip_with_manifest_and_oversized_member(tmp_path, shared_cxr, monkeypatch):
    import cxr_core.pipeline.datasets as datasets

    rows = shared_records("shenzhen")[:2]
    archive = tmp_path / "cxr.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(
            "cxr/manifest.csv",
            "path,label,source\n" + "".join(f"{r['path']},Normal,shenzhen\n" for r in rows),
        )
        for row in rows:
            zf.write(shared_cxr / row["path"], f"cxr/{row['path']}")
    result = discover(archive)
    assert result.layout == "manifest"
    assert [r.member for r in result.records] == [f"cxr/{r['path']}" for r in rows]
    assert read_record_bytes(result.records[0]) == (shared_cxr / rows[0]["path"]).read_bytes()

    monkeypatch.setattr(datasets, "MAX_MEMBER_BYTES", 1000)
    with pytest.raises(DatasetError) as info:
        discover(archive)
    assert "limit" in str(info.value)


def test_empty_or_unrecognisable_folder_raises_with_the_accepted_layouts(tmp_path):
    with pytest.raises(DatasetError, match="Accepted layouts"):
        discover(tmp_path)
    (tmp_path / "holiday.png").write_bytes(b"\x89PNG")
    with pytest.raises(DatasetError, match="Normal") as info:
        discover(tmp_path)
    assert "manifest.csv" in str(info.value)
    with pytest.raises(DatasetError, match="does not exist"):
        discover(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match="neither a folder nor a zip"):
        discover(tmp_path / "notes.txt")


def test_fingerprint_is_stable_and_changes_when_a_file_is_added(tmp_path, kaggle_tree):
    tree = tmp_path / "copy"
    shutil.copytree(kaggle_tree, tree)
    first = dataset_fingerprint(discover(tree).records)
    assert len(first) == 64
    assert dataset_fingerprint(discover(tree).records) == first
    # Moving the same data elsewhere keeps the fingerprint.
    moved = tmp_path / "elsewhere" / "data"
    shutil.copytree(tree, moved)
    assert dataset_fingerprint(discover(moved).records) == first

    shutil.copy(next((tree / "Normal").iterdir()), tree / "Tuberculosis" / "added.png")
    assert dataset_fingerprint(discover(tree).records) != first


def test_read_record_bytes_of_a_vanished_file_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="no longer exists"):
        read_record_bytes(Record(str(tmp_path / "gone.png"), 0, "kaggle"))


def test_films_outside_the_allowed_roots_are_refused_whether_by_manifest_or_symlink(tmp_path, monkeypatch):
    """A manifest naming absolute or ../ paths, or a symlink in the folder, used to pull in any readable file."""
    from cxr_core.pipeline.dataset_roots import OUTSIDE_ROOTS

    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64  # discovery looks at names and places, not pixels
    dataset = tmp_path / "roots" / "clinic"
    (dataset / "films").mkdir(parents=True)
    secret = tmp_path / "elsewhere" / "other-patient.png"
    secret.parent.mkdir()
    for name in ("other-patient.png", "second.png", "third.png", "fourth.png"):
        (secret.parent / name).write_bytes(png)
    (dataset / "films" / "own.png").write_bytes(png)
    (dataset / "films" / "link-out.png").symlink_to(secret.parent / "third.png")
    (dataset / "films" / "link-in.png").symlink_to(dataset / "films" / "own.png")
    (dataset / "escape").symlink_to(secret.parent, target_is_directory=True)
    (dataset / "manifest.csv").write_text(
        "path,label\n"
        "films/own.png,1\n"
        f"{secret},0\n"
        "../../elsewhere/second.png,0\n"
        "films/link-out.png,1\n"
        "films/link-in.png,1\n"
        "escape/fourth.png,0\n"
    )
    monkeypatch.setenv("CXR_DATASET_ROOTS", str(tmp_path / "roots"))
    found = discover(dataset)
    assert sorted(Path(r.path).name for r in found.records) == ["link-in.png", "own.png"]
    refused = [path for path, reason in found.skipped if reason == OUTSIDE_ROOTS]
    assert len(refused) == 4, found.skipped
    assert not any(Path(r.path).resolve().parent == secret.parent.resolve() for r in found.records)

    monkeypatch.setenv("CXR_DATASET_ROOTS", f"{tmp_path / 'roots'}:{secret.parent}")  # an operator allows it
    assert len(discover(dataset).records) == 6
