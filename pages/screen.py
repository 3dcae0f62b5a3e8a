"""Screen page: drop chest X-rays; a worklist in order of risk on top, then the chosen film in a viewer."""

import pandas as pd
import streamlit as st

import ui_common
import ui_viewer
from cxr_core.errors import CxrError
from ui import report_pdf, screening_view

st.title("Screen chest X-rays for tuberculosis")

serving, problem = ui_common.serving_model_or_none()
if serving is None:
    st.error(f"Screening is not available: {problem}")
    st.stop()
if serving.warning:
    st.warning(serving.warning)

# The worklist lives in the session, not in the uploader: a page change empties the uploader, never the list.
generation = st.session_state.get("uploader_generation")
generation = generation if isinstance(generation, int) else 0
uploads = st.file_uploader(
    "Drop one or more frontal chest X-rays (PNG, JPEG, DICOM, TIFF, BMP, WebP)",
    accept_multiple_files=True,
    key="uploads" if generation == 0 else f"uploads_{generation}",
    help="The file type is recognised from the content, so DICOM files without an extension work too. Films "
    "stay on the worklist for this browser session, across pages, until you clear it.",
)
if not isinstance(st.session_state.get("include_ids"), bool):
    st.session_state["include_ids"] = st.session_state.get("screen_include_ids") is True
include_ids = st.checkbox(
    "Show patient identity from DICOM headers (name, ID, study date, accession number; also in exports)",
    key="include_ids",
    help="Off by default so identifiers do not end up in downloads or screenshots: films are then named "
    "film-01, film-02, … by their place on the worklist, on the page and in every export.",
)
st.session_state["screen_include_ids"] = include_ids

files = st.session_state.get("screen_files")
files = files if isinstance(files, list) and all(isinstance(f, screening_view.Upload) for f in files) else []
fresh, duplicates = screening_view.dedupe_uploads([(f.name, f.getvalue()) for f in uploads or []])
known = {f.sha256 for f in files}
files = files + [upload for upload in fresh if upload.sha256 not in known]
st.session_state["screen_files"] = files

if not files:
    st.info(
        f"Results use model **{serving.version}**: an image is called *TB suspected* when its TB "
        f"probability is at least **{serving.threshold:.4g}**, "
        + (
            f"the operating point of the {screening_view.site_text(serving.site, serving.threshold)}, chosen "
            "on this site's own confirmed films."
            if serving.site
            else "the operating point chosen on validation images for high sensitivity."
        )
        + " The heatmap shows where the model found evidence for TB; films without a plausible pair of "
        "lung fields are refused, not scored."
    )
    st.stop()

try:
    predictor = ui_common.predictor_for(serving)
except CxrError as error:
    st.error(f"The model could not be loaded: {error}. Ask an administrator to roll back or retrain.")
    st.stop()


def _clear_worklist() -> None:
    for key in ("screen_memo", "screen_files", "screen_film", "worklist"):
        st.session_state.pop(key, None)
    st.session_state["uploader_generation"] = generation + 1


# Score each film once; a new drop scores only the new films, a model or identity change scores all again.
memo = screening_view.valid_memo(st.session_state.get("screen_memo"))  # anything else counts as none
model_key = [serving.sha256, serving.version]
shas = [f.sha256 for f in files]
previous = None
if memo and (memo["model"] != model_key or memo["include_ids"] != include_ids or memo["films"] != shas[: len(memo["films"])]):
    previous = memo["version"]
    memo = None
if memo is None:
    memo = {"films": [], "model": model_key, "version": serving.version, "items": [], "names": [],
            "fingerprints": [], "include_ids": include_ids,
            "notice": screening_view.model_change_notice(previous, serving.version)}  # fmt: skip
# A slot at the same place on every run, empty when nothing is scored: while films are scored it holds the
# viewer's hidden preload, so that the browser loads Plotly while the server works (ui_viewer.preload).
warm_up = st.empty()
todo = files[len(memo["films"]) :]
if todo:
    start = len(memo["films"])
    names = [
        upload.name if include_ids else screening_view.pseudonym(start + i + 1) for i, upload in enumerate(todo)
    ]
    from cxr_core.registry.sites import film_fingerprint

    def _fingerprint(item) -> None:
        memo["fingerprints"].append(film_fingerprint(item.model_input) if item.model_input is not None else None)

    with warm_up.container():
        ui_viewer.preload()
    with st.spinner(f"Screening {len(todo)} image(s)…"):  # in chunks, within the per-batch limits
        scored, limit_notice = screening_view.screen_in_chunks(
            predictor, todo, names=names, on_scored=_fingerprint, include_identifiers=include_ids
        )
    warm_up.empty()
    if limit_notice:
        memo["notice"] = " ".join(filter(None, [memo.get("notice"), limit_notice]))
    taken = len(scored)  # past the per-batch file limit, films are left off the worklist, not marked
    memo["items"] += scored
    memo["names"] += names[:taken]
    memo["films"] += [upload.sha256 for upload in todo[:taken]]
    if taken < len(todo):  # the rest were not screened: dropped from the list, as the notice says
        st.session_state["screen_files"] = files = files[: len(memo["films"])]
st.session_state["screen_memo"] = memo
items = memo["items"]
rows = screening_view.summary_rows(items, predictor, include_ids, serving.site, memo["fingerprints"])

if memo["notice"]:
    st.warning(memo["notice"], icon=":material/published_with_changes:")
if include_ids:
    notice = screening_view.duplicate_notice(duplicates)
else:  # no upload name on the page: say which film of the worklist the duplicate is
    position = {upload.name: shas.index(upload.sha256) + 1 for upload in fresh}
    notice = screening_view.duplicate_notice(
        [(screening_view.pseudonym(position[kept]),) * 2 for _, kept in duplicates]
    )
if notice:
    st.info(notice, icon=":material/content_copy:")

# ------------------------------------------------------------------------------------------ worklist
counts = screening_view.group_counts(items)
metric_columns = st.columns(5)
metric_columns[0].metric("Images", len(items))
for column, group in zip(metric_columns[1:], screening_view.RISK_ORDER, strict=True):
    column.metric(group, counts[group])

col_title, col_clear = st.columns([4, 1])
col_title.subheader("Worklist")
col_clear.button(
    "Clear the worklist", on_click=_clear_worklist, key="worklist_clear", icon=":material/delete_sweep:",
    help="Removes every film of this session from the worklist (nothing is stored on the server).",
)  # fmt: skip
groups = st.pills(
    "Show",
    screening_view.RISK_ORDER,
    selection_mode="multi",
    default=list(screening_view.RISK_ORDER),
    key="worklist_filter",
    help="Films are listed by risk: TB suspected, then borderline, then no TB signs, unreadable last.",
)
ordered = screening_view.worklist(rows, items)  # every film, in risk order: the exports follow it
table = screening_view.worklist(rows, items, groups)
shown_films = [row["film"] for row in table]



def _ticked_film() -> int | None:
    """The film of the row ticked in the last run's table (a click, or a row set through the session)."""
    state = st.session_state.get("worklist")
    previous = st.session_state.get("worklist_films")
    try:
        rows = list(state["selection"]["rows"])
    except (KeyError, TypeError):
        return st.session_state.get("screen_film")
    if rows and isinstance(previous, list) and isinstance(rows[0], int) and 0 <= rows[0] < len(previous):
        return previous[rows[0]]
    return st.session_state.get("screen_film")


# The ticked row and the film shown are one thing: the film is remembered, and its row is ticked again
# in whatever order or filter the table has now (the first row when the film left the list).
remembered = _ticked_film()
default_row = shown_films.index(remembered) if remembered in shown_films else 0
if shown_films:
    st.session_state["worklist"] = {"selection": {"rows": [default_row], "columns": [], "cells": []}}
st.session_state["worklist_films"] = shown_films

identity_columns = {column: label for column, label in screening_view.IDENTIFIER_LABELS.items()}
st.dataframe(
    pd.DataFrame(screening_view.table_rows(table)),
    hide_index=True,
    key="worklist",
    on_select="rerun",
    selection_mode="single-row-required",
    height=min(36 + 35 * max(1, len(table)), 36 + 35 * 7),
    column_config={
        **identity_columns,
        "file": "File",
        "result": "Result",
        "tb_probability": "TB probability",
        "warnings": "Warnings",
        "problem": "Problem",
        "fitted_on_site_films": "Fitted the site profile",
        "threshold": None,
        "operating_point": None,
        "evidence_in_lungs": None,
        "model_version": None,
        "film": None,
    },
)
st.caption(
    f"Model {serving.version}; decided at the {screening_view.site_text(serving.site, serving.threshold)}: "
    f"TB suspected at a probability of {serving.threshold:.6g} or above; borderline = within "
    f"{screening_view.BORDERLINE_MARGIN:g} of it, on either side. The ticked row is the film shown below."
)


unreadable = [item for item in items if not item.ok]
if unreadable:
    st.error(
        "Could not be screened:\n\n"
        + "\n".join(f"- **{ui_common.md(item.name)}**: {ui_common.md(item.error)}" for item in unreadable),
        icon=":material/error:",
    )


def _report_for(item) -> bytes:
    return report_pdf.film_report_pdf(
        item, model_version=serving.version, include_identifiers=include_ids, site=serving.site,
        fitted=screening_view.fitted_on_site(serving.site, memo["fingerprints"][items.index(item)]),
        evidence_reference=serving.evidence_reference,
    )  # fmt: skip


def _batch_reports() -> bytes:
    order = [row["film"] for row in ordered]
    return report_pdf.batch_zip(
        [(report_pdf.report_name(items[i]), _report_for(items[i])) for i in order]
        + [("tb_screening_results.csv", screening_view.summary_csv(ordered))]
    )


col_csv, col_zip, _ = st.columns([1, 1, 2])
col_csv.download_button(
    "Download results (CSV)",
    data=screening_view.summary_csv(ordered),
    file_name="tb_screening_results.csv",
    mime="text/csv",
    on_click="ignore",
    icon=":material/download:",
)
col_zip.download_button(
    "Download all reports (PDF, zip)",
    data=_batch_reports,
    file_name="tb_screening_reports.zip",
    mime="application/zip",
    on_click="ignore",
    icon=":material/folder_zip:",
    key="download_zip",
)

if not shown_films:
    st.info("No film in the chosen result groups.")
    st.caption(screening_view.DISCLAIMER)
    st.stop()

# ------------------------------------------------------------------------------------------ the film
chosen = shown_films[default_row]
st.session_state["screen_film"] = chosen
item = items[chosen]


ui_viewer.film_card(
    item, serving, include_ids, film_key=memo["films"][chosen], fingerprint=memo["fingerprints"][chosen]
)
st.caption(screening_view.DISCLAIMER)
