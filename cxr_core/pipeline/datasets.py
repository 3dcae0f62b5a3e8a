"""Finding labelled chest X-rays in whatever shape a user hands them over.

Users point the pipeline at data they downloaded themselves: the Kaggle "Tuberculosis (TB) Chest
X-ray Database" (``Normal/`` and ``Tuberculosis/`` folders), the NLM Shenzhen/Montgomery sets (label in
the file name), a folder with a CSV manifest, or a ``.zip`` of any of these straight from the browser.
Discovery turns all of them into the same sorted list of :class:`Record` so ingestion never cares
where the data came from, and it reports every file it passed over (with a reason) instead of
failing, because one odd file in 4,000 should not cost a clinician a retraining run.

Zip archives are read member by member through :mod:`zipfile`; nothing is extracted to disk, so an
upload cannot write outside its folder (zip-slip) or fill the disk.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import posixpath
import re
import threading
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cxr_core.errors import DatasetError
from cxr_core.imaging.decode import IMAGE_EXTENSIONS
from cxr_core.pipeline.dataset_roots import inside_allowed_roots


def sources_with_both_classes(labels, sources, min_per_class: int) -> list[str]:
    """Sources that supply both classes, at least ``min_per_class`` films of each (TBX11K, with one
    stray normal among its TB films, does not): where a within-source AUC means anything, and where a
    source's look does not stand for its label."""
    counts: dict[str, Counter] = {}
    for source, label in zip(sources, labels, strict=True):
        counts.setdefault(str(source), Counter())[str(label)] += 1
    return sorted(
        source for source, by_label in counts.items()
        if len(by_label) == 2 and min(by_label.values()) >= min_per_class
    )  # fmt: skip


# No chest X-ray is this large; anything bigger is a zip bomb or a mistake.
MAX_MEMBER_BYTES = 200 * 1024 * 1024
LABEL_NAMES = {"Normal": 0, "Tuberculosis": 1}

_LABEL_WORDS = {
    "0": 0,
    "0.0": 0,
    "normal": 0,
    "1": 1,
    "1.0": 1,
    "tuberculosis": 1,
    "tb": 1,
}
_LABEL_DIRS = {"normal": 0, "tuberculosis": 1, "tb": 1}
_NLM_PREFIXES = {"chncxr_": "shenzhen", "mcucxr_": "montgomery"}
_NLM_NAME = re.compile(r"^(?P<stem>.+)_(?P<label>[01])\.png$", re.IGNORECASE)
_JUNK_FILES = {"thumbs.db", "desktop.ini"}
_JUNK_DIRS = {"__macosx"}

ACCEPTED_LAYOUTS = (
    "Accepted layouts: (1) a folder with a manifest.csv listing 'path' and 'label' columns "
    "(label 0/1 or Normal/Tuberculosis, optional 'source' column, paths relative to the CSV); "
    "(2) folders named 'Normal' and 'Tuberculosis' at any depth, as in the Kaggle "
    "'Tuberculosis (TB) Chest X-ray Database'; (3) NLM file names ending in _0.png (normal) or "
    "_1.png (tuberculosis), as in the Shenzhen and Montgomery sets; or a .zip file of any of these. "
    f"Images must be {', '.join(sorted(e.lstrip('.').upper() for e in IMAGE_EXTENSIONS))} files."
)


@dataclass(frozen=True)
class Record:
    """One labelled image; ``member`` is set when ``path`` is a zip archive and the image lives inside it."""

    path: str
    label: int
    source: str
    member: str | None = None

    @property
    def name(self) -> str:
        """The file's own name, for tables and error messages, whether or not it lives in a zip."""
        return posixpath.basename(self.member) if self.member else os.path.basename(self.path)

    @property
    def display_path(self) -> str:
        """Where a person would look for the file (``archive.zip/Normal/x.png`` for zip members)."""
        return f"{self.path}/{self.member}" if self.member else self.path


@dataclass
class DiscoveryResult:
    """What was found, what was passed over and why, and which layout was recognised.

    ``layout`` is ``"manifest"``, ``"kaggle"`` or ``"nlm"`` (a zip reports the layout of its contents).
    """

    records: list[Record]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    layout: str = ""

    @property
    def label_counts(self) -> dict[str, int]:
        """Counts per class name, so a UI can warn about a missing or tiny class before training."""
        counts = Counter(r.label for r in self.records)
        return {name: counts.get(value, 0) for name, value in LABEL_NAMES.items()}

    @property
    def source_counts(self) -> dict[str, int]:
        """Counts per source: the classes often come from different hospitals, which a model can learn."""
        return dict(sorted(Counter(r.source for r in self.records).items()))


def parse_label(value: object) -> int | None:
    """Map the label spellings people actually use to 1 (TB) / 0 (normal); None when it is something else."""
    if value is None:
        return None
    return _LABEL_WORDS.get(str(value).strip().lower())


def source_from_name(name: str, default: str) -> str:
    """NLM file names carry their hospital; that beats a generic source for per-site metrics."""
    lower = posixpath.basename(name.replace("\\", "/")).lower()
    for prefix, source in _NLM_PREFIXES.items():
        if lower.startswith(prefix):
            return source
    return default


def _extension_problem(name: str) -> str | None:
    """Why a file is not taken as an image, or None when its extension is fine."""
    ext = posixpath.splitext(name)[1].lower()
    if not ext:
        return "no file extension, so it is not taken as an image (rename DICOM files to .dcm)"
    if ext not in IMAGE_EXTENSIONS:
        return f"not an image file ({ext})"
    return None


def _is_junk(part: str) -> bool:
    """Hidden files and OS litter (macOS resource forks, Windows thumbnails) are noise, not data."""
    return part.startswith(".") or part.lower() in _JUNK_FILES or part.lower() in _JUNK_DIRS


# --------------------------------------------------------------------------------------------------
# A dataset root seen as a flat set of relative POSIX paths, whether it is a folder or a zip archive,
# so that each layout is recognised by one piece of code.


class _Tree:
    def __init__(self, root: str):
        self.root = root
        self.files: dict[str, str] = {}  # normalised relative path -> locator (member name for zips)
        self.skipped: list[tuple[str, str]] = []

    def display(self, rel: str) -> str:
        raise NotImplementedError

    def record(self, rel: str, label: int, source: str) -> Record:
        raise NotImplementedError

    def read_text(self, rel: str) -> str:
        raise NotImplementedError


class _DirTree(_Tree):
    def __init__(self, root: str):
        super().__init__(root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not _is_junk(d))
            rel_dir = os.path.relpath(dirpath, root)
            for filename in filenames:
                if _is_junk(filename):
                    continue
                rel = filename if rel_dir == "." else posixpath.join(Path(rel_dir).as_posix(), filename)
                self.files[rel] = rel

    def display(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))

    def record(self, rel: str, label: int, source: str) -> Record:
        return Record(path=self.display(rel), label=label, source=source)

    def read_text(self, rel: str) -> str:
        with open(self.display(rel), "rb") as handle:
            return handle.read().decode("utf-8-sig", errors="replace")


class _ZipTree(_Tree):
    def __init__(self, root: str):
        super().__init__(root)
        archive = _open_zip(root)
        for info in archive.infolist():
            name = info.filename
            if info.is_dir():
                continue
            rel = name.replace("\\", "/")
            parts = rel.split("/")
            if rel.startswith("/") or re.match(r"^[A-Za-z]:", rel) or ".." in parts:
                self.skipped.append((f"{root}/{name}", "unsafe path inside the zip (points outside it)"))
                continue
            parts = [p for p in parts if p not in ("", ".")]
            if not parts or any(_is_junk(p) for p in parts):
                continue
            rel = "/".join(parts)
            if info.flag_bits & 0x1:
                self.skipped.append((f"{root}/{name}", "file is password-protected inside the zip"))
                continue
            if info.file_size > MAX_MEMBER_BYTES:
                size_mb = info.file_size / 1024 / 1024
                limit_mb = MAX_MEMBER_BYTES // 1024 // 1024
                self.skipped.append(
                    (
                        f"{root}/{name}",
                        f"{size_mb:.0f} MB uncompressed, over the {limit_mb} MB limit per file",
                    )
                )
                continue
            if rel in self.files:
                self.skipped.append((f"{root}/{name}", "appears twice in the zip; the first copy is used"))
                continue
            self.files[rel] = name

    def display(self, rel: str) -> str:
        return f"{self.root}/{self.files.get(rel, rel)}"

    def record(self, rel: str, label: int, source: str) -> Record:
        return Record(path=self.root, label=label, source=source, member=self.files[rel])

    def read_text(self, rel: str) -> str:
        with _open_zip(self.root).open(self.files[rel]) as handle:
            return handle.read(MAX_MEMBER_BYTES).decode("utf-8-sig", errors="replace")


# --------------------------------------------------------------------------------------------------
# Layouts, tried in order. Each returns None when the tree does not look like it.


def _read_csv_rows(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header (lower-cased) and rows; semicolon and tab CSVs from spreadsheets are accepted too."""
    first_line = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first_line.count)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return [], []
    rows = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue
        rows.append({key: (values[i].strip() if i < len(values) else "") for i, key in enumerate(header)})
    return header, rows


def _find_manifest(tree: _Tree, notes: list[str]) -> str | None:
    """The CSV to trust: manifest.csv, else the only CSV with path+label columns (top level, then one down).

    One level down is searched because zipping a folder puts everything under the folder's name.
    """
    for depth in (0, 1):
        csvs = sorted(rel for rel in tree.files if rel.count("/") == depth and rel.lower().endswith(".csv"))
        usable = []
        for rel in csvs:
            try:
                header, _ = _read_csv_rows(tree.read_text(rel).split("\n", 1)[0])
            except (OSError, zipfile.BadZipFile, RuntimeError) as exc:
                notes.append(f"{tree.display(rel)} could not be read ({exc})")
                continue
            if "path" in header and "label" in header:
                usable.append(rel)
            elif posixpath.basename(rel).lower() == "manifest.csv":
                notes.append(
                    f"{tree.display(rel)} has no 'path' and 'label' columns (found: {', '.join(header)})"
                )
        named = [rel for rel in usable if posixpath.basename(rel).lower() == "manifest.csv"]
        if len(named) == 1:
            return named[0]
        if len(usable) == 1 and not named:
            return usable[0]
        if len(usable) > 1:
            notes.append(
                "several CSV files could be the manifest ("
                + ", ".join(tree.display(r) for r in usable)
                + "); name the one to use manifest.csv"
            )
            return None
    return None


def _from_manifest(tree: _Tree, manifest: str) -> tuple[list[Record], list[tuple[str, str]]]:
    _, rows = _read_csv_rows(tree.read_text(manifest))
    base = posixpath.dirname(manifest)
    where = tree.display(manifest)
    records: list[Record] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for line_no, row in enumerate(rows, start=2):
        raw_path = row.get("path", "")
        if not raw_path:
            skipped.append((f"{where}:{line_no}", "row has no path"))
            continue
        label = parse_label(row.get("label"))
        if label is None:
            skipped.append(
                (raw_path, f"unknown label {row.get('label')!r} (use 0/1, Normal or Tuberculosis)")
            )
            continue
        source = row.get("source") or source_from_name(raw_path, "unknown")
        problem = _extension_problem(raw_path)
        if problem:
            skipped.append((raw_path, problem))
            continue
        located = _locate(tree, base, raw_path)
        if located is None:
            skipped.append((raw_path, f"listed in {posixpath.basename(manifest)} but the file is missing"))
            continue
        kind, key = located
        if kind == "file":
            record = Record(path=key, label=label, source=source)
        else:
            record = tree.record(key, label, source)
        if key in seen:
            skipped.append((raw_path, "listed more than once in the manifest; the first row is used"))
            continue
        seen.add(key)
        records.append(record)
    return records, skipped


def _locate(tree: _Tree, base: str, raw_path: str) -> tuple[str, str] | None:
    """Where a manifest row points: ("tree", key in the tree) or ("file", absolute path); None if absent.

    Folder manifests may name absolute paths, files in hidden folders or files beside their own
    folder; zip manifests can only name members of the same zip.
    """
    if isinstance(tree, _DirTree) and os.path.isabs(raw_path):
        return ("file", os.path.abspath(raw_path)) if os.path.isfile(raw_path) else None
    rel = posixpath.normpath(posixpath.join(base, raw_path.replace("\\", "/")))
    if rel in tree.files:
        return ("tree", rel)
    if isinstance(tree, _DirTree) and not rel.startswith("/"):
        full = os.path.normpath(os.path.join(tree.root, *rel.split("/")))
        if os.path.isfile(full):
            return ("file", full)
    return None


def _label_from_dirs(rel: str) -> int | None:
    """Label given by the nearest enclosing Normal/Tuberculosis/TB folder, if any."""
    for part in reversed(rel.split("/")[:-1]):
        label = _LABEL_DIRS.get(part.lower())
        if label is not None:
            return label
    return None


def _from_kaggle(tree: _Tree) -> tuple[list[Record], list[tuple[str, str]]] | None:
    if not any(_label_from_dirs(rel) is not None and not _extension_problem(rel) for rel in tree.files):
        return None
    records, skipped = [], []
    for rel in sorted(tree.files):
        problem = _extension_problem(rel)
        if problem:
            skipped.append((tree.display(rel), problem))
            continue
        label = _label_from_dirs(rel)
        if label is None:
            skipped.append((tree.display(rel), "not inside a Normal/ or Tuberculosis/ folder"))
            continue
        name = posixpath.basename(rel)
        source = source_from_name(name, "kaggle")
        match = _NLM_NAME.match(name)
        if source != "kaggle" and match and int(match["label"]) != label:
            skipped.append(
                (tree.display(rel), "its NLM file name and its folder give different labels; left out")
            )
            continue
        records.append(tree.record(rel, label, source))
    return records, skipped


def _from_nlm(tree: _Tree) -> tuple[list[Record], list[tuple[str, str]]] | None:
    if not any(_NLM_NAME.match(posixpath.basename(rel)) for rel in tree.files):
        return None
    records, skipped = [], []
    for rel in sorted(tree.files):
        name = posixpath.basename(rel)
        match = _NLM_NAME.match(name)
        if match:
            records.append(tree.record(rel, int(match["label"]), source_from_name(name, "unknown")))
            continue
        problem = _extension_problem(rel)
        if problem:
            skipped.append((tree.display(rel), problem))
        else:
            skipped.append(
                (tree.display(rel), "file name does not end in _0.png or _1.png, so it has no label")
            )
    return records, skipped


def discover(root: str | os.PathLike) -> DiscoveryResult:
    """Find every labelled X-ray under ``root`` (a folder, a ``.zip`` or a manifest ``.csv``).

    The first layout that matches wins (manifest, then Kaggle folders, then NLM names) so that an
    explicit manifest always overrides what the folder names suggest. Files that cannot be used are
    listed in ``skipped`` with a reason; only a root with nothing usable at all raises.
    """
    root_str = os.path.abspath(os.fspath(root))
    if not os.path.exists(root_str):
        raise DatasetError(f"Dataset path {root_str} does not exist.")
    notes: list[str] = []
    manifest: str | None = None
    if os.path.isdir(root_str):
        tree: _Tree = _DirTree(root_str)
    elif root_str.lower().endswith(".csv"):
        tree = _DirTree(os.path.dirname(root_str))
        manifest = os.path.basename(root_str)
        tree.files.setdefault(manifest, manifest)
    elif zipfile.is_zipfile(root_str):
        try:
            tree = _ZipTree(root_str)
        except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
            raise DatasetError(f"{root_str} is not a readable zip archive ({exc}).") from exc
    else:
        raise DatasetError(f"{root_str} is neither a folder nor a zip archive. {ACCEPTED_LAYOUTS}")

    found: tuple[list[Record], list[tuple[str, str]]] | None = None
    layout = ""
    if manifest is None:
        manifest = _find_manifest(tree, notes)
    if manifest is not None:
        header, _ = _read_csv_rows(tree.read_text(manifest).split("\n", 1)[0])
        if "path" not in header or "label" not in header:
            raise DatasetError(
                f"{tree.display(manifest)} needs 'path' and 'label' columns (found: {', '.join(header)})."
            )
        found, layout = _from_manifest(tree, manifest), "manifest"
    else:
        for name, finder in (("kaggle", _from_kaggle), ("nlm", _from_nlm)):
            found = finder(tree)
            if found is not None:
                layout = name
                break

    skipped = list(tree.skipped)
    records: list[Record] = []
    if found is not None:
        records, layout_skipped = found
        skipped.extend(layout_skipped)
    if isinstance(tree, _DirTree):
        records = inside_allowed_roots(records, tree.root, skipped)
    if not records:
        raise DatasetError(_nothing_found_message(root_str, tree, layout, skipped, notes))
    records.sort(key=lambda r: (r.path, r.member or ""))
    skipped.sort()
    return DiscoveryResult(records=records, skipped=skipped, layout=layout)


def _nothing_found_message(root: str, tree: _Tree, layout: str, skipped, notes) -> str:
    """Say what was looked at and why nothing qualified, so the user can fix the data, not guess."""
    if layout:
        head = (
            f"No usable chest X-rays in {root} (recognised as a {layout} layout, but every file was skipped)."
        )
    elif not tree.files:
        head = f"No files found in {root}."
    else:
        head = f"No labelled chest X-rays found in {root} ({len(tree.files)} files looked at)."
    parts = [head, *notes]
    if skipped:
        reasons = Counter(reason for _, reason in skipped).most_common(3)
        parts.append("Skipped: " + "; ".join(f"{n} x {reason}" for reason, n in reasons) + ".")
    parts.append(ACCEPTED_LAYOUTS)
    return " ".join(p if p.endswith(".") else p + "." for p in parts)


# --------------------------------------------------------------------------------------------------
# Reading records back


_ZIP_CACHE: dict[tuple, zipfile.ZipFile] = {}
_ZIP_CACHE_LOCK = threading.Lock()
_ZIP_CACHE_SIZE = 4


def _open_zip(path: str) -> zipfile.ZipFile:
    """A shared open handle per archive: re-parsing a 4,000-member directory per image would dominate ingest.

    The key holds the pid (a handle inherited through fork shares its file offset with the parent)
    and the file's mtime/size (a re-uploaded archive must not be read through a stale directory).
    """
    stat = os.stat(path)
    key = (os.getpid(), os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    with _ZIP_CACHE_LOCK:
        archive = _ZIP_CACHE.get(key)
        if archive is None:
            archive = zipfile.ZipFile(path)
            while len(_ZIP_CACHE) >= _ZIP_CACHE_SIZE:
                oldest = next(iter(_ZIP_CACHE))
                stale = _ZIP_CACHE.pop(oldest)
                if oldest[0] == os.getpid():
                    stale.close()
            _ZIP_CACHE[key] = archive
        return archive


def read_record_bytes(record: Record) -> bytes:
    """The raw file content of a record, from disk or from inside its zip, at most 200 MB."""
    try:
        if record.member is None:
            size = os.path.getsize(record.path)
            if size > MAX_MEMBER_BYTES:
                raise DatasetError(f"{record.display_path} is {size // 2**20} MB, too large for an X-ray.")
            with open(record.path, "rb") as handle:
                return handle.read()
        archive = _open_zip(record.path)
        info = archive.getinfo(record.member)
        if info.file_size > MAX_MEMBER_BYTES:
            raise DatasetError(
                f"{record.display_path} is {info.file_size // 2**20} MB, too large for an X-ray."
            )
        with archive.open(info) as handle:
            return handle.read(MAX_MEMBER_BYTES + 1)
    except DatasetError:
        raise
    except KeyError as exc:
        raise DatasetError(f"{record.display_path} is no longer in the zip archive.") from exc
    except FileNotFoundError as exc:
        raise DatasetError(f"{record.display_path} no longer exists.") from exc
    except (OSError, zipfile.BadZipFile, RuntimeError, EOFError) as exc:
        raise DatasetError(f"{record.display_path} could not be read ({exc}).") from exc


def _record_size(record: Record) -> int:
    try:
        if record.member is None:
            return os.path.getsize(record.path)
        return _open_zip(record.path).getinfo(record.member).file_size
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise DatasetError(
            f"{record.display_path} could not be found while fingerprinting the data."
        ) from exc


def dataset_fingerprint(records: list[Record]) -> str:
    """A sha256 tag for "this data", cheap enough to compute on every run.

    It hashes (path below the dataset's common folder, label, size) rather than the pixels: it
    changes when a file is added, removed, relabelled or replaced by one of a different size, but not
    when the same data is moved to another disk or zipped (the common folder is stripped from zip
    member names as well as from file paths).
    """
    groups: dict[str | None, list[Record]] = {}
    for record in records:
        groups.setdefault(record.path if record.member is not None else None, []).append(record)
    rows = []
    for archive, members in groups.items():
        if archive is None:
            keys = [Path(r.path).as_posix() for r in members]
        else:
            keys = [r.member.replace("\\", "/") for r in members]
        common = posixpath.commonpath([posixpath.dirname(k) for k in keys])
        for record, key in zip(members, keys, strict=True):
            rel = posixpath.relpath(key, common) if common else key
            rows.append((rel, int(record.label), _record_size(record)))
    digest = hashlib.sha256()
    for key, label, size in sorted(rows):
        digest.update(f"{key}\0{label}\0{size}\n".encode())
    return digest.hexdigest()
