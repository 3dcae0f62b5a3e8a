"""Where datasets may come from: the configured dataset roots, and admins' uploaded archives.

Split from :mod:`cxr_core.pipeline.datasets` (which finds films in a folder or archive) because this is
the security boundary, not discovery: a path typed on a page, a manifest line or a symlink must not
pull any file the server can read into training, the evaluation gallery or an error message, and an
uploaded archive must not climb out of its folder or unpack into a bomb. Discovery calls
:func:`inside_allowed_roots`; the pages, the CLI and the pipeline driver call
:func:`allowed_dataset_path` and :func:`save_uploaded_zip`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from pathlib import Path

from cxr_core.errors import DatasetError

MAX_UPLOAD_BYTES = 50 * 1024**2  # the dashboard's upload limit (.streamlit/config.toml maxUploadSize)
MAX_UPLOAD_MEMBERS = 100_000
MAX_UPLOAD_INFLATED = 20 * 1024**3  # what an uploaded zip may hold once unpacked
MAX_COMPRESSION_RATIO = 200  # X-rays barely compress; a zip bomb compresses by thousands


def allowed_dataset_path(text: str | os.PathLike) -> Path:
    """A dataset path a user typed, accepted only inside the configured dataset roots.

    The check is made on the resolved path (``..`` and symlinks followed) *before* anything is looked
    up, and the refusal names only the allowed folders: whether something exists elsewhere on the
    server, and how many files it holds, is not the user's to learn.
    """
    from cxr_core.settings import dataset_roots, resolve_data_path

    text = str(text or "").strip()
    if not text:
        raise DatasetError("Enter the path of a dataset folder or .zip file.")
    roots = dataset_roots()
    path = resolve_data_path(text)
    if not any(path == root or root in path.parents for root in roots):
        shown = ", ".join(_shown(root) for root in roots)
        raise DatasetError(
            f"Datasets are read only from the configured dataset folders ({shown}). Put the dataset there, "
            "or ask the operator to add its folder to CXR_DATASET_ROOTS."
        )
    if not path.exists():
        raise DatasetError(f"There is no dataset at {_shown(path)}.")
    if path.is_file() and path.suffix.lower() != ".zip":
        raise DatasetError(f"{_shown(path)} is a file; give a dataset folder or a .zip archive.")
    return path


def _shown(path: Path) -> str:
    from cxr_core.settings import PROJECT_ROOT

    try:
        return str(path.relative_to(PROJECT_ROOT)) + ("/" if path.is_dir() else "")
    except ValueError:
        return str(path)


def save_uploaded_zip(data: bytes, name: str) -> Path:
    """Keep a dataset .zip uploaded by an admin in the uploads folder, after checking it is safe to read.

    Refused: more than :data:`MAX_UPLOAD_BYTES`, not a zip, member names that climb out (``..``,
    absolute paths), too many members, and zip bombs (declared unpacked size or compression ratio far
    beyond what X-rays give). Written under a content-derived name in one rename, so a half-written
    upload is never visible.
    """
    from cxr_core.fsutil import write_bytes_atomic
    from cxr_core.settings import uploads_dir

    if len(data) > MAX_UPLOAD_BYTES:
        raise DatasetError(f"The archive is larger than {MAX_UPLOAD_BYTES // 1024**2} MB.")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise DatasetError("The upload is not a readable .zip archive.") from error
    if len(members) > MAX_UPLOAD_MEMBERS:
        raise DatasetError(
            f"The archive holds {len(members)} entries; at most {MAX_UPLOAD_MEMBERS} are accepted."
        )
    inflated = 0
    for member in members:
        parts = member.filename.replace("\\", "/").split("/")
        if (
            member.filename.startswith(("/", "\\"))
            or ".." in parts
            or re.match(r"^[A-Za-z]:", member.filename)
        ):
            raise DatasetError(f"The archive names a file outside itself ({member.filename!r}); refused.")
        inflated += member.file_size
        if member.compress_size and member.file_size / member.compress_size > MAX_COMPRESSION_RATIO:
            raise DatasetError("The archive unpacks to far more than X-rays could; refused as a zip bomb.")
    if inflated > MAX_UPLOAD_INFLATED:
        raise DatasetError("The archive unpacks to more than 20 GB; refused.")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem)[:60] or "dataset"
    target = uploads_dir() / f"{stem}-{hashlib.sha256(data).hexdigest()[:10]}.zip"
    write_bytes_atomic(target, data)
    return target


def locate_recorded_dataset(recorded: str | os.PathLike | None, holds: tuple[str, ...] = ()) -> Path | None:
    """Where the dataset a model recorded at training lives on this machine, or None.

    A model records its dataset relative to the project (``../shared/data/cxr``); deployed elsewhere
    (the container mounts the data at ``/data``, an operator keeps it on another disk) that path
    names nothing, and the Evaluation page would lose its test films and the radiologists' boxes
    without a word. The recorded place is the model's own record, written when an admin trained it, and
    is used as it stands when it exists. Otherwise the same trailing folders (``shared/data/cxr``,
    ``data/cxr``, ``cxr``; longest first) are looked for under each configured dataset root only, with
    ``..`` refused and the real path (symlinks followed) required to stay inside that root. A name as
    short as ``cxr`` could be another dataset, so a candidate counts only if it ``holds`` the given
    paths (a few of the model's recorded test films, relative to the dataset).
    """
    from pathlib import PureWindowsPath

    from cxr_core.pipeline.evaluate import dataset_root
    from cxr_core.settings import dataset_roots, resolve_data_path

    if not recorded:
        return None
    text = str(recorded)
    path = resolve_data_path(text)
    if path.exists():
        return path
    # recorded on Windows (``..\\shared\\data\\cxr``, ``D:\\data\\cxr``): the same folders, another separator
    written = PureWindowsPath(text) if "\\" in text or re.match(r"^[A-Za-z]:", text) else Path(text)
    parts = written.parts[1 if written.anchor else 0 :]
    tails = [Path(*parts[-n:]) for n in range(min(3, len(parts)), 0, -1) if ".." not in parts[-n:]]
    for tail in tails:
        for root in dataset_roots():
            candidate = root / tail
            if not candidate.exists() or not real_path_inside(candidate, allowed_bases(root)):
                continue
            if all((dataset_root(candidate) / held).exists() for held in holds):
                return candidate
    return None


def allowed_bases(*folders: str | os.PathLike) -> list[Path]:
    """The real paths of ``folders``, or of the configured dataset roots when none are given: resolved
    once, so checking many files against them costs no further look-ups of the roots."""
    from cxr_core.settings import dataset_roots

    return [Path(os.path.realpath(folder)) for folder in (folders or dataset_roots())]


def real_path_inside(path: str | os.PathLike, bases: list[Path]) -> bool:
    """The real path (symlinks and ``..`` followed) is one of ``bases`` or lies under one: checked on the
    resolved path, so neither a symlink nor a ``..`` can hide where a file really is."""
    real = Path(os.path.realpath(path))
    return any(real == base or base in real.parents for base in bases)


OUTSIDE_ROOTS = (
    "points outside the dataset folder and the configured dataset folders (symlink or manifest path)"
)


def inside_allowed_roots(records: list, root: str, skipped: list[tuple[str, str]]) -> list:
    """Keep only films whose real location (symlinks and ``..`` resolved) is inside the dataset's own
    folder or a configured dataset root.

    A manifest may name absolute or ``../`` paths and a folder may hold symlinks; followed blindly, they
    let a dataset pull any file the server can read (another patient's films, a key) into training, the
    evaluation gallery or an error message. Checked on the resolved path, so a symlink cannot hide it.
    """
    allowed = allowed_bases(root) + allowed_bases()
    kept = []
    for record in records:
        if real_path_inside(record.path, allowed):
            kept.append(record)
        else:
            skipped.append((record.path, OUTSIDE_ROOTS))
    return kept
