"""The Screen page's view-model: which model serves, what a result means in words, what the CSV holds.

Patient identifiers stay out of every table and export unless the user switched them on; the CSV is
formula-safe because file names are user-controlled.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cxr_core.errors import CxrError, ModelError
from cxr_core.fsutil import read_json_or_empty
from cxr_core.imaging.display import VIEWER_SIDE, display_gray
from cxr_core.modelling.predictor import TB, ScreenedImage, result_row, spreadsheet_safe
from cxr_core.registry.sites import SiteProfiles
from cxr_core.registry.store import Registry, sha256_file
from cxr_core.settings import Layout

DISCLAIMER = (
    "Decision support for research and demonstration only. Not a medical device: every result needs "
    "a clinician's reading and confirmatory testing."
)
# One result vocabulary for the page, the worklist, the CSV, the PDF and the DICOM result: a clinician
# who reads "Borderline (TB side)" on screen reads the same words in every export.
DECISION_TB = "TB suspected"
DECISION_BORDERLINE_TB = "Borderline (TB side)"
DECISION_BORDERLINE_NORMAL = "Borderline (no-TB side)"
DECISION_NORMAL = "No TB signs"
DECISION_FAILED = "Unreadable"
RESULTS = (DECISION_TB, DECISION_BORDERLINE_TB, DECISION_BORDERLINE_NORMAL, DECISION_NORMAL, DECISION_FAILED)
ACTIONS = {
    DECISION_TB: "refer for confirmatory testing",
    DECISION_BORDERLINE_TB: "refer for confirmatory testing; close to the threshold, read the film with care",
    DECISION_BORDERLINE_NORMAL: "close to the threshold: read the film with particular care before clearing it",
    DECISION_NORMAL: "no referral on this result alone",
    DECISION_FAILED: "not scored: see the problem",
}


# --------------------------------------------------------------------------------- the serving model


@dataclass
class ServingModel:
    """The model the Screen page uses now; ``sha256`` keys the in-process model cache."""

    version: str
    model_dir: Path
    sha256: str
    threshold: float
    warning: str | None = None
    site: dict | None = None  # the active site profile, when it was set for this model version
    evidence_reference: dict | None = None  # where this model's validation films put their evidence
    tflite_sha256: str | None = None  # the serving twin of these weights, when one was converted


def serving_model(registry: Registry | None = None, version: str | None = None) -> ServingModel:
    """Resolve the current version (or a named one) afresh, so a promotion is seen on the next run.

    Reading ``current.json`` and checking the model's sha256 takes milliseconds; the cache key then
    changes exactly when another version (or a rewritten file) is to be served.
    """
    registry = registry or Registry()
    model_dir, warning = registry.resolve_with_warning(version)
    meta = read_json_or_empty(model_dir / Layout.METADATA)
    sha = meta.get("model_sha256") or sha256_file(model_dir / Layout.MODEL)
    try:
        threshold = float(meta["threshold"])
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"model version {model_dir.name} has no operating threshold recorded") from error
    version = str(meta.get("version") or model_dir.name)
    site = None
    try:
        active = SiteProfiles(registry.root).active()
    except CxrError:
        active = None
    if active and active.get("model_version") == version:
        site, threshold = active, float(active["threshold"])
    elif active:
        note = (
            f"The site profile {active['name']} was set for model {active.get('model_version')}; the model in "
            f"use is {version}, so its own threshold applies until the site's films are validated again."
        )
        warning = f"{warning} {note}" if warning else note
    reference = meta.get("evidence_reference")
    # A twin converted after the server started (`models convert`) changes the cache key too, so the
    # faster runtime is picked up on the next run instead of after a restart.
    made_from = meta.get("tflite_model_sha256") or meta.get("model_sha256")  # as runtime.read_converted reads it
    twin = meta.get("tflite_sha256") if made_from == sha else None
    return ServingModel(
        version=version, model_dir=model_dir, sha256=sha, threshold=threshold, warning=warning, site=site,
        evidence_reference=reference if isinstance(reference, dict) else None, tflite_sha256=twin,
    )  # fmt: skip


def site_text(site: dict | None, threshold: float) -> str:
    """Which operating point decides, in one line: the site profile's name, floor and date, or the model's own.

    Shown wherever a decision is (sidebar, result card, CSV, PDF), so nobody reads a result without
    knowing whose threshold made it.
    """
    if not site:
        return f"model's own threshold {threshold:.4g} (chosen on development data)"
    from cxr_core.registry.sites import sensitivity_floor

    in_use = site.get("in_use") or {}
    since = str(in_use.get("since") or "")[:10] or "date not recorded"
    text = (
        f"site profile {site['name']} (threshold {float(site['threshold']):.4g}, sensitivity floor "
        f"{sensitivity_floor(site):.0%}, in use since {since})"
    )
    if in_use.get("override"):
        text += f"; switched on below its floor by an admin override: {in_use['override']}"
    return text


def fitted_on_site(site: dict | None, fingerprint: str | None) -> bool:
    """True when this film was one of the films that chose the active site profile's threshold."""
    return bool(site and fingerprint and fingerprint in set(site.get("fitted_on") or ()))


FITTED_NOTE = (
    "This film was one of the films used to set the site profile's threshold: its result is not an "
    "independent test of that profile."
)


def lung_evidence_text(item: ScreenedImage) -> str | None:
    """Where the evidence lies, as neutral information shown on every film (None without a lung model).

    Grad-CAM mass of a small network spreads beyond the lungs on most films, so a share alone is no
    reason for alarm; :func:`evidence_warning` says when it is unusual for this model.
    """
    share = item.evidence_in_lungs
    if share is None:
        return None
    return f"Evidence inside the lung fields: {share:.0%} of the heatmap's mass ({1 - share:.0%} outside)."


def evidence_warning(item: ScreenedImage, reference: dict | None) -> str | None:
    """A warning only when this film's evidence-in-lungs is unusual for the model: below the 5th percentile
    of its own validation films (``evidence_reference.lung_share_p05`` in the model's metadata).

    A model without that reference gets no warning at all: a fixed level would fire on most films of a
    model whose heatmaps spread wide, and a warning on every film is no warning.
    """
    share = item.evidence_in_lungs
    try:
        level = float((reference or {})["lung_share_p05"])
    except (KeyError, TypeError, ValueError):
        return None
    if share is None or share >= level:
        return None
    return (
        f"Unusual for this model: only {share:.0%} of the evidence lies inside the lung fields, less than on "
        f"95% of its validation films (5th percentile {level:.0%}). The result may rest on something outside "
        "the lungs (a marker, a tube, the edge of the film): read with care."
    )


# --------------------------------------------------------------------------------- screening results


def decision_text(item: ScreenedImage) -> str:
    """The result in the one vocabulary: TB suspected / Borderline (which side) / No TB signs / Unreadable.

    The side comes from the model's own label, which compares the unrounded probability with the
    unrounded threshold; nothing here rounds before deciding.
    """
    if not item.ok or item.prediction is None:
        return DECISION_FAILED
    tb = item.prediction.label == TB
    if is_borderline(item):
        return DECISION_BORDERLINE_TB if tb else DECISION_BORDERLINE_NORMAL
    return DECISION_TB if tb else DECISION_NORMAL


def is_tb(item: ScreenedImage) -> bool:
    return item.ok and item.prediction is not None and item.prediction.label == TB


def fmt_probability(probability: float, threshold: float) -> tuple[str, str]:
    """Probability and threshold as text with enough decimals that they never look equal.

    At three decimals 0.9076 and 0.9081 both read 0.908, and "0.908: no TB signs" beside "TB from
    0.908" looks like a contradiction to the person reading it.
    """
    for digits in range(3, 16):
        shown, limit = f"{probability:.{digits}f}", f"{threshold:.{digits}f}"
        if shown != limit or probability == threshold:
            return shown, limit
    return repr(float(probability)), repr(float(threshold))


BORDERLINE_MARGIN = 0.05


def is_borderline(item: ScreenedImage, margin: float = BORDERLINE_MARGIN) -> bool:
    """A probability this close to the threshold could fall either side with a slightly different film."""
    if not item.ok or item.prediction is None:
        return False
    return abs(item.prediction.probability - item.prediction.threshold) < margin


def shrink_for_display(item: ScreenedImage, max_side: int = VIEWER_SIDE) -> ScreenedImage:
    """Keep only what the page redraws: the picture at viewer size and the crop box scaled with it.

    The viewer zooms, so films are kept up to ``VIEWER_SIDE`` (2048 px, the full resolution of most
    digital chest films); only larger ones are shrunk, and the network's input is dropped, so a batch
    does not keep tens of MB per film in the session. ``width``/``height`` keep the original size.
    """
    if not item.ok or item.image is None:
        return item
    height, width = item.image.pixels.shape[:2]
    small = display_gray(item.image.pixels, max_side)
    scale = min(1.0, max_side / max(height, width))  # the same factor gradcam.overlay would apply
    if item.box is not None and scale != 1.0:
        box = item.box
        item.box = type(box)(
            round(box.top * scale),
            round(box.left * scale),
            round(box.bottom * scale),
            round(box.right * scale),
        )
    item.image.pixels = small
    item.model_input = None
    if item.lungs is not None and scale != 1.0:  # the outline is drawn on the shrunk picture: shrink it too
        mask = cv2.resize(
            item.lungs["mask"], (small.shape[1], small.shape[0]), interpolation=cv2.INTER_NEAREST
        )
        item.lungs = {**item.lungs, "mask": mask}
    return item


# DICOM identifier -> (column in the table and CSV, label for people). Shown only when switched on.
IDENTIFIER_FIELDS = {
    "PatientName": "patient_name",
    "PatientID": "patient_id",
    "PatientBirthDate": "patient_birth_date",
    "StudyDate": "study_date",
    "AccessionNumber": "accession_number",
}
IDENTIFIER_LABELS = {
    "patient_name": "Patient",
    "patient_id": "Patient ID",
    "patient_birth_date": "Birth date",
    "study_date": "Study date",
    "accession_number": "Accession number",
}
_DATE_FIELDS = {"PatientBirthDate", "StudyDate"}


def person_name(value: object) -> str:
    """A DICOM person name (PN) as people write it: ``DOE^JOHN^A`` -> ``Doe, John A``.

    PN is ``family^given^middle^prefix^suffix``; names recorded in capitals are title-cased, names
    already in mixed case are kept as written (``McDonald`` stays ``McDonald``).
    """
    text = str(value or "").split("=")[0].strip()  # the alphabetic representation only
    if "^" not in text:
        return _people_case(text)
    parts = [p.strip() for p in text.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = (_people_case(p) for p in parts[:5])
    first = " ".join(p for p in (prefix, given, middle) if p)
    name = ", ".join(p for p in (family, first) if p)
    return f"{name}, {suffix}" if suffix else name


def _people_case(text: str) -> str:
    if text.isupper() or text.islower():
        return re.sub(r"[^\W\d_]+", lambda m: m.group(0).capitalize(), text)
    return text


def dicom_date(value: object) -> str:
    """A DICOM DA value (``20240131``) as ``2024-01-31``; anything else is shown as it is."""
    text = str(value or "").strip()
    if re.fullmatch(r"\d{8}", text):
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def identity(item: ScreenedImage) -> dict[str, str]:
    """The film's patient and study identity for people (column name -> text); empty for non-DICOM.

    The items only hold identifiers when they were read with ``include_identifiers=True``, which the
    page does only when the user switched identity on.
    """
    metadata = item.image.metadata if item.image else {}
    found = {}
    for key, column in IDENTIFIER_FIELDS.items():
        value = metadata.get(key)
        if value in (None, ""):
            continue
        if key == "PatientName":
            found[column] = person_name(value)
        elif key in _DATE_FIELDS:
            found[column] = dicom_date(value)
        else:
            found[column] = _text(value)
    return found


def identity_lines(item: ScreenedImage) -> list[tuple[str, str]]:
    """(label, value) pairs for the card and the PDF."""
    return [(IDENTIFIER_LABELS[column], value) for column, value in identity(item).items()]


_DICOM_LABELS = {
    "Modality": "Modality",
    "ViewPosition": "View",
    "BodyPartExamined": "Body part",
    "PhotometricInterpretation": "Photometric interpretation",
    "BitsStored": "Bits stored",
    "WindowCenter": "Window centre",
    "WindowWidth": "Window width",
    "voi": "Display mapping",
    "TransferSyntax": "Transfer syntax",
    "PixelSpacing": "Pixel spacing (mm)",
    "ImagerPixelSpacing": "Imager pixel spacing (mm)",
    "NumberOfFrames": "Frames",
    "exif_orientation": "EXIF orientation applied",
}


def image_details(item: ScreenedImage, include_identifiers: bool = False) -> list[tuple[str, str]]:
    """(label, value) pairs describing the file: format, size, bit depth, DICOM header details."""
    image = item.image
    if image is None:
        return []
    rows = [
        ("Format", image.format),
        ("Size", f"{image.width} x {image.height} pixels"),
        ("Bit depth", str(image.bit_depth)),
    ]
    for key, label in _DICOM_LABELS.items():
        if key in image.metadata and image.metadata[key] not in (None, ""):
            rows.append((label, _text(image.metadata[key])))
    if include_identifiers:
        rows += identity_lines(item)
    return rows


def _text(value) -> str:
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


SUMMARY_FIELDS = [
    "file",
    "result",
    "tb_probability",
    "threshold",
    "operating_point",
    "fitted_on_site_films",
    "evidence_in_lungs",
    "warnings",
    "problem",
    "model_version",
]
INTERNAL_FIELDS = {"film"}  # the worklist's index back into the batch: never exported


def summary_rows(
    items: list[ScreenedImage],
    predictor,
    include_identifiers: bool = False,
    site: dict | None = None,
    fingerprints: list[str | None] | None = None,
) -> list[dict]:
    """One flat row per film for the worklist and its CSV, identity columns first when switched on.

    Probability and threshold are the unrounded floats the decision compared (a CSV showing 0.1024 beside
    0.102373 and calling it TB looked like an error); unreadable films have no probability, not "None".
    """
    rows = []
    for index, item in enumerate(items):
        base = result_row(item, predictor)
        row = {}
        if include_identifiers:
            found = identity(item)
            for column in IDENTIFIER_FIELDS.values():
                row[column] = found.get(column, "")
        fingerprint = fingerprints[index] if fingerprints and index < len(fingerprints) else None
        row.update({
            "file": base["file"],
            "result": decision_text(item),
            "tb_probability": None if item.prediction is None else float(item.prediction.probability),
            "threshold": float(item.prediction.threshold if item.prediction is not None else base["threshold"]),
            "operating_point": site_text(site, float(base["threshold"])),
            "fitted_on_site_films": "yes" if fitted_on_site(site, fingerprint) else "",
            "evidence_in_lungs": base["evidence_in_lungs"],
            "warnings": base["warning"] or "",
            "problem": base["error"] or "",
            "model_version": base["model_version"],
        })  # fmt: skip
        rows.append(row)
    return rows


def summary_csv(rows: list[dict]) -> bytes:
    """The rows as CSV bytes, in the order given (the page gives the worklist's); every text cell is
    neutralised so a file name cannot run as a formula, and floats keep every digit."""
    fields: list[str] = []
    for row in rows:
        fields += [key for key in row if key not in fields and key not in INTERNAL_FIELDS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: spreadsheet_safe("" if value is None else value) for key, value in row.items()})
    return buffer.getvalue().encode("utf-8-sig")  # the BOM lets Excel read accented names correctly


def table_rows(rows: list[dict]) -> list[dict]:
    """The worklist as the page shows it: the probability with enough digits to differ from the threshold."""
    shown = []
    for row in rows:
        probability = row.get("tb_probability")
        text = "" if probability is None else fmt_probability(probability, row["threshold"])[0]
        shown.append({**row, "tb_probability": text})
    return shown


def batch_counts(items: list[ScreenedImage]) -> dict[str, int]:
    return {
        "total": len(items),
        "tb": sum(1 for item in items if is_tb(item)),
        "normal": sum(1 for item in items if item.ok and not is_tb(item)),
        "failed": sum(1 for item in items if not item.ok),
        "with_warnings": sum(1 for item in items if item.ok and item.warnings),
    }


# --------------------------------------------------------------------------------- the worklist

GROUP_TB = "TB suspected"
GROUP_BORDERLINE = "Borderline"
GROUP_NORMAL = "No TB signs"
GROUP_FAILED = "Unreadable"
RISK_ORDER = (GROUP_TB, GROUP_BORDERLINE, GROUP_NORMAL, GROUP_FAILED)


def risk_group(item: ScreenedImage) -> str:
    """Where a film goes on the worklist: clear TB first, then films near the threshold (either side)."""
    if not item.ok or item.prediction is None:
        return GROUP_FAILED
    if is_borderline(item):
        return GROUP_BORDERLINE
    return GROUP_TB if is_tb(item) else GROUP_NORMAL


def risk_order(items: list[ScreenedImage]) -> list[int]:
    """Indices of ``items`` in worklist order: by group, then highest probability first, then upload order."""

    def key(index: int):
        item = items[index]
        probability = item.prediction.probability if item.ok and item.prediction else 0.0
        return (RISK_ORDER.index(risk_group(item)), -probability, index)

    return sorted(range(len(items)), key=key)


def worklist(rows: list[dict], items: list[ScreenedImage], groups: list[str] | None = None) -> list[dict]:
    """The batch table in risk order, kept to the chosen result groups; ``film`` is the index in ``items``."""
    chosen = set(groups) if groups is not None else set(RISK_ORDER)
    return [dict(rows[i], film=i) for i in risk_order(items) if risk_group(items[i]) in chosen]


def group_counts(items: list[ScreenedImage]) -> dict[str, int]:
    return {group: sum(1 for item in items if risk_group(item) == group) for group in RISK_ORDER}


@dataclass
class Upload:
    name: str
    data: bytes
    sha256: str


def dedupe_uploads(files: list[tuple[str, bytes]]) -> tuple[list[Upload], list[tuple[str, str]]]:
    """One entry per distinct content (the first name wins) and the (dropped, kept) name pairs.

    The same film dropped twice, or under two names, must not be counted twice in the batch.
    """
    kept: dict[str, Upload] = {}
    duplicates = []
    for name, data in files:
        digest = hashlib.sha256(data).hexdigest()
        if digest in kept:
            duplicates.append((name, kept[digest].name))
        else:
            kept[digest] = Upload(name, data, digest)
    return list(kept.values()), duplicates


MAX_BATCH_FILES = 200  # files screened per drop (CXR_MAX_BATCH_FILES)
MAX_BATCH_MEGAPIXELS = 1000  # decoded pixels per drop, summed (CXR_MAX_BATCH_MEGAPIXELS)
SCORE_CHUNK = 16  # films decoded and scored together; only their display copies are kept after


def _limit(name: str, default: int) -> int:
    import os

    try:
        return max(1, int(os.environ.get(name) or default))
    except ValueError:
        return default


def screen_in_chunks(
    predictor, files: list[Upload], chunk: int = SCORE_CHUNK, names: list[str] | None = None, on_scored=None,
    **read_options,
):  # fmt: skip
    """Screen a drop of files a chunk at a time, within the per-batch limits; returns (items, notice).

    Every file used to be decoded at full size before any was scored, with no cap on how many files or
    pixels one drop could hold: a few hundred large films could exhaust the server's memory for every
    user. Now at most ``MAX_BATCH_FILES`` files are taken, decoded and scored ``chunk`` at a time and
    shrunk for display before the next chunk, and once the drop has used ``MAX_BATCH_MEGAPIXELS`` the
    remaining files are listed as not screened, with the reason, instead of being decoded. ``names``
    (default: the files' own) are what the films are called (pseudonyms with identity off), and
    ``on_scored`` sees each film before it is shrunk (e.g. to fingerprint the network's input).
    """
    names = names or [upload.name for upload in files]
    max_files = _limit("CXR_MAX_BATCH_FILES", MAX_BATCH_FILES)
    max_pixels = _limit("CXR_MAX_BATCH_MEGAPIXELS", MAX_BATCH_MEGAPIXELS) * 1_000_000
    taken = files[:max_files]
    names = names[: len(taken)]
    notice = None
    if len(files) > max_files:
        notice = (
            f"Only the first {max_files} of {len(files)} files were screened (the limit per batch). "
            "Drop the others as another batch."
        )
    items: list[ScreenedImage] = []
    pixels = 0
    for start in range(0, len(taken), chunk):
        part = list(zip(names[start : start + chunk], taken[start : start + chunk], strict=True))
        if pixels >= max_pixels:
            reason = (
                f"not screened: this batch already holds {pixels // 1_000_000} megapixels (limit "
                f"{max_pixels // 1_000_000}); drop this film again as part of another batch"
            )
            for name, _ in part:
                item = ScreenedImage(name=name, ok=False, error=reason)
                if on_scored:
                    on_scored(item)
                items.append(item)
            continue
        for item in predictor.screen([(name, upload.data) for name, upload in part], **read_options):
            if item.ok and item.image is not None:
                pixels += item.image.width * item.image.height
            if on_scored:
                on_scored(item)
            items.append(shrink_for_display(item))
    return items, notice


def duplicate_notice(duplicates: list[tuple[str, str]]) -> str | None:
    if not duplicates:
        return None
    pairs = "; ".join(
        f"{dropped} is the same file as {kept}" if dropped != kept else f"{dropped} was dropped twice"
        for dropped, kept in duplicates
    )
    n = len(duplicates)
    return f"{n} duplicate file{'s' if n > 1 else ''} counted once ({pairs})."


def model_change_notice(previous_version: str | None, version: str) -> str | None:
    """Said when the films on screen were scored by another model than the one now in use."""
    if previous_version is None or previous_version == version:
        return None
    return (
        f"The model in use changed from {previous_version} to {version} since these films were scored; "
        f"they have been scored again with {version}, and the results below are {version}'s."
    )


def pseudonym(position: int) -> str:
    """How a film is named when patient identity is off: its position on the session's worklist.

    File names often carry a patient's name or record number, so with identity off the upload's name
    never reaches the page, a CSV, a PDF (text or metadata), an export's file name or a log.
    """
    return f"film-{position:02d}"


# --------------------------------------------------------------------------------- the viewer


def lung_contours(item: ScreenedImage, shape: tuple[int, int]) -> list[np.ndarray] | None:
    """The outline of the lungs as (n, 2) x/y point arrays in the picture's pixels, or None.

    A hook for lung segmentation: a ScreenedImage that carries a ``lung_mask`` (2-D, any size, non-zero
    inside the lungs) gets its outline drawn; without one the viewer hides the toggle.
    """
    import cv2

    mask = getattr(item, "lung_mask", None)
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.ndim != 2 or not mask.any():
        return None
    binary = (mask > 0).astype(np.uint8)
    height, width = shape
    if binary.shape != (height, width):
        binary = cv2.resize(binary, (width, height), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2) for c in contours if len(c) >= 3]


def report_stem(name: str) -> str:
    """A file-name-safe stem for a film's exports (user-controlled names lose path and odd characters)."""
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base[1:] else base
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "film"
    return stem[:80]


def result_text(item: ScreenedImage, version: str) -> str:
    """The result in one line, for the DICOM header and the report."""
    if not item.ok or item.prediction is None:
        return f"{DECISION_FAILED}: {item.error}"
    shown, limit = fmt_probability(item.prediction.probability, item.prediction.threshold)
    decision = decision_text(item)
    return (
        f"{decision}: {ACTIONS[decision]}. TB probability {shown} (called TB suspected at {limit} or above), "
        f"model {version}. {DISCLAIMER}"
    )


MEMO_KEYS = {"films", "model", "version", "items", "notice", "names", "fingerprints", "include_ids"}


def valid_memo(memo) -> dict | None:
    """The Screen page's remembered worklist, or None when the session holds anything else under its key."""
    if not isinstance(memo, dict) or set(memo) != MEMO_KEYS or not isinstance(memo["items"], list):
        return None
    if not isinstance(memo["films"], list) or len(memo["films"]) != len(memo["items"]):
        return None
    return memo if all(isinstance(item, ScreenedImage) for item in memo["items"]) else None


# --------------------------------------------------------------------------------- viewer layers


def heat_layer(gray: np.ndarray, heatmap: np.ndarray, box, max_side: int = VIEWER_SIDE) -> np.ndarray:
    """The Grad-CAM as an RGBA layer over the film: jet colours, alpha = the heatmap's value.

    Drawn over the film with an opacity of ``alpha`` it gives exactly :func:`gradcam.overlay`'s blend
    (per-pixel weight heat x alpha), but as its own layer the browser changes its opacity, and the
    film's window/level, without a new picture: the viewer keeps the reader's zoom and pan.
    """
    from cxr_core.imaging.display import display_scale
    from cxr_core.imaging.preprocess import CropBox

    height, width = gray.shape[:2]
    box = box or CropBox(0, 0, height, width)
    scale = display_scale(height, width, max_side)
    out_h, out_w = display_gray(gray, max_side).shape[:2]
    layer = np.zeros((out_h, out_w, 4), np.uint8)
    top, left = round(box.top * scale), round(box.left * scale)
    bottom = max(top + 1, min(out_h, round(box.bottom * scale)))
    right = max(left + 1, min(out_w, round(box.right * scale)))
    heat = cv2.resize(heatmap.astype(np.float32), (right - left, bottom - top), interpolation=cv2.INTER_CUBIC)
    heat = np.clip(heat, 0.0, 1.0)
    colours = cv2.applyColorMap((heat * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
    layer[top:bottom, left:right, :3] = cv2.cvtColor(colours, cv2.COLOR_BGR2RGB)
    layer[top:bottom, left:right, 3] = np.rint(heat * 255.0).astype(np.uint8)
    return layer


def png_source(pixels: np.ndarray) -> str:
    """A gray (2-D) or RGBA picture as the lossless PNG data URI a Plotly image layer shows.

    OpenCV's encoder at the fastest level, where Plotly's own (``px.imshow(binary_string=True)``, through
    Pillow) took two to three times as long for the same pixels. A gray film uses run-length deflate
    after PNG's row filters: on real X-rays about a fifth smaller than the default and no slower. The
    heat layer, mostly transparent outside the lung box, is smaller with the default strategy.
    """
    import base64

    if pixels.ndim == 2:
        options = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    else:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGRA)  # OpenCV writes BGRA channel order
        options = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, png = cv2.imencode(".png", pixels, options)
    if not ok:
        raise ValueError(f"could not encode a {pixels.shape} picture as PNG")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


def window_transfer(level: float, width: float) -> tuple[float, float]:
    """Window/level as a linear map on 0..1 greys (slope, intercept), the same map as
    :func:`cxr_core.imaging.display.apply_window`, for the browser to apply to the film layer."""
    width = max(2.0, float(width))
    slope = 255.0 / (width - 1.0)
    return slope, (width / 2.0 - float(level)) / (width - 1.0)
