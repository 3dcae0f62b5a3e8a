"""The PACS node page's view-model: the node's queue as a worklist, and a received film opened for viewing.

The queue is read where the node writes it (``CXR_NODE_DIR`` or ``node.state_dir``); the page only
reads. Patient identity comes from the kept film's header, and only when the identity switch is on
(the same switch as the Screen page's); refused films are not kept, so they have none to show.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cxr_core.modelling.predictor import ScreenedImage
from cxr_core.node.queue import DATABASE, DELIVERED, FAILED, RECEIVED, SCREENED, SKIPPED, STATES, FilmQueue
from cxr_core.node.service import state_dir
from cxr_core.settings import load_params
from ui import screening_view

STATUS = {
    RECEIVED: "Received, waiting to be screened",
    SCREENED: "Screened, sending to the PACS",
    DELIVERED: "Result in the PACS",
    FAILED: "Failed to deliver",
    SKIPPED: "Not screened",
}
COUNT_LABELS = {
    RECEIVED: "Waiting",
    SCREENED: "Sending",
    DELIVERED: "Delivered",
    FAILED: "Failed to deliver",
    SKIPPED: "Not screened",
}
WORKLIST_LIMIT = 500


def node_folder() -> Path:
    return state_dir(load_params()["node"])


def node_queue(folder: Path | None = None) -> FilmQueue | None:
    """The node's queue, or None while no node has ever run here (nothing to show yet)."""
    folder = folder or node_folder()
    return FilmQueue(folder) if (folder / DATABASE).exists() else None


def _when(seconds: float | None) -> str:
    if not seconds:
        return ""
    return dt.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def film_name(row: dict) -> str:
    return f"PACS film #{row['id']}"


def header_identity(queue: FilmQueue, row: dict) -> dict[str, str]:
    """Patient/study columns from the kept film's header (formatted as on the Screen page)."""
    import pydicom

    if not row.get("film_path"):
        return {}
    try:
        header = pydicom.dcmread(queue.films_dir / row["film_path"], stop_before_pixels=True)
    except (OSError, ValueError, pydicom.errors.InvalidDicomError):
        return {}
    found = {}
    for key, column in screening_view.IDENTIFIER_FIELDS.items():
        value = header.get(key)
        if value in (None, ""):
            continue
        if key == "PatientName":
            found[column] = screening_view.person_name(value)
        elif key in ("PatientBirthDate", "StudyDate"):
            found[column] = screening_view.dicom_date(value)
        else:
            found[column] = str(value)
    return found


def decision(row: dict) -> str:
    if row["probability"] is None:
        return ""
    return screening_view.DECISION_TB if row["label"] == "Tuberculosis" else screening_view.DECISION_NORMAL


def problem(row: dict) -> str:
    """Why a film has no result in the PACS (yet): its refusal reason, or the last delivery error."""
    if row["state"] == SKIPPED:
        return row["reason"] or ""
    if row["state"] in (SCREENED, FAILED) and row["last_error"]:
        tries = f" ({row['attempts']} attempt{'s' if row['attempts'] != 1 else ''})"
        return row["last_error"] + tries
    return ""


def worklist(queue: FilmQueue, include_identifiers: bool = False, limit: int = WORKLIST_LIMIT) -> list[dict]:
    """One row per film, newest first; identity columns only with the switch on."""
    rows = []
    for row in queue.rows(limit):
        entry = {
            "film": row["id"],
            "received": _when(row["received_at"]),
            "status": STATUS.get(row["state"], row["state"]),
            "decision": decision(row),
            "tb_probability": row["probability"],
            "problem": problem(row),
            "delivered": _when(row["delivered_at"]),
            "model_version": row["model_version"] or "",
        }
        if include_identifiers:
            identity = header_identity(queue, row)
            entry |= {column: identity.get(column, "") for column in screening_view.IDENTIFIER_LABELS}
        rows.append(entry)
    return rows


def counts(queue: FilmQueue) -> dict[str, int]:
    found = queue.counts()
    return {COUNT_LABELS[state]: found[state] for state in STATES}


def row_of(queue: FilmQueue, film_id: int) -> dict | None:
    return next((row for row in queue.rows(WORKLIST_LIMIT) if row["id"] == film_id), None)


def open_film(queue: FilmQueue, row: dict, predictor, include_identifiers: bool = False) -> ScreenedImage:
    """The kept film screened for the viewer, exactly as a dropped file is (the same Predictor call)."""
    if not row.get("film_path"):
        return ScreenedImage(
            name=film_name(row), ok=False, error=f"not kept: {row.get('reason') or 'refused'}"
        )
    try:
        data = queue.read_film(row)
    except OSError as error:
        return ScreenedImage(
            name=film_name(row), ok=False, error=f"the kept film cannot be read: {error.strerror}"
        )
    item = predictor.screen([(film_name(row), data)], include_identifiers=include_identifiers)[0]
    return screening_view.shrink_for_display(item)


def node_result_note(row: dict, predictor) -> str | None:
    """The PACS holds the node's result; say so when the model shown here is another one."""
    if row["model_version"] and row["model_version"] != predictor.version:
        return (
            f"The result sent to the PACS came from model {row['model_version']} (TB probability "
            f"{row['probability']:.3f}); the viewer shows the model in use now, {predictor.version}."
        )
    return None
