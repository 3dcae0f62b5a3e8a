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

uploads = st.file_uploader(
    "Drop one or more frontal chest X-rays (PNG, JPEG, DICOM, TIFF, BMP, WebP)",
    accept_multiple_files=True,
    key="uploads",
    help="The file type is recognised from the content, so DICOM files without an extension work too.",
)
include_ids = st.checkbox(
    "Show patient identity from DICOM headers (name, ID, study date, accession number; also in exports)",
    value=False,
    key="include_ids",
    help="Off by default so identifiers do not end up in downloads or screenshots.",
)

if not uploads:
    st.info(
        f"Results use model **{serving.version}**: an image is called *TB suspected* when its TB "
        f"probability is at least **{serving.threshold:.3f}**, "
        + (
            f"the operating point of the site profile **{serving.site['name']}**, chosen on this site's own "
            "confirmed films."
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

# One entry per distinct file content; score each batch once (the viewer's controls only redraw).
files, duplicates = screening_view.dedupe_uploads([(f.name, f.getvalue()) for f in uploads])
films_key = (tuple(u.sha256 for u in files), include_ids)
memo = screening_view.valid_memo(st.session_state.get("screen_memo"))  # anything else counts as none
if not memo or memo["films"] != films_key or memo["model"] != (serving.sha256, serving.version):
    previous = memo["version"] if memo and memo["films"] == films_key else None
    with st.spinner(f"Screening {len(files)} image(s)…"):  # in chunks, within the per-batch limits
        items, limit_notice = screening_view.screen_in_chunks(predictor, files, include_identifiers=include_ids)
    memo = {
        "films": films_key,
        "model": (serving.sha256, serving.version),
        "version": serving.version,
        "items": items,
        "notice": " ".join(filter(None, [screening_view.model_change_notice(previous, serving.version),
                                         limit_notice])) or None,  # fmt: skip
    }
    st.session_state["screen_memo"] = memo
    st.session_state.pop("film_choice", None)
items = memo["items"]
rows = screening_view.summary_rows(items, predictor, include_identifiers=include_ids)

if memo["notice"]:
    st.warning(memo["notice"], icon=":material/published_with_changes:")
notice = screening_view.duplicate_notice(duplicates)
if notice:
    st.info(notice, icon=":material/content_copy:")

# ------------------------------------------------------------------------------------------ worklist
counts = screening_view.group_counts(items)
metric_columns = st.columns(5)
metric_columns[0].metric("Images", len(items))
for column, group in zip(metric_columns[1:], screening_view.RISK_ORDER, strict=True):
    column.metric(group, counts[group])

st.subheader("Worklist")
groups = st.pills(
    "Show",
    screening_view.RISK_ORDER,
    selection_mode="multi",
    default=list(screening_view.RISK_ORDER),
    key="worklist_filter",
    help="Films are listed by risk: TB suspected, then borderline, then no TB signs, unreadable last.",
)
table = screening_view.worklist(rows, items, groups)
shown_films = [row["film"] for row in table]


def _open_selected_row() -> None:
    state = st.session_state.get("worklist")
    selected = list(getattr(getattr(state, "selection", None), "rows", None) or [])
    films = st.session_state.get("worklist_films")
    films = films if isinstance(films, list) else []
    if selected and selected[0] < len(films):
        st.session_state["film_choice"] = films[selected[0]]


st.session_state["worklist_films"] = shown_films
st.dataframe(
    pd.DataFrame(table),
    hide_index=True,
    key="worklist",
    on_select=_open_selected_row,
    selection_mode="single-row",
    column_config={
        "file": "File",
        "priority": "Priority",
        "decision": "Result",
        "tb_probability": st.column_config.NumberColumn("TB probability", format="%.3f"),
        "warnings": "Warnings",
        "error": "Problem",
        **{column: label for column, label in screening_view.IDENTIFIER_LABELS.items()},
        "threshold": None,
        "model_version": None,
        "ok": None,
        "label": None,
        "film": None,
    },
)
st.caption(
    f"Model {serving.version}, TB suspected at a probability of {serving.threshold:.3f} or above; "
    f"borderline = within {screening_view.BORDERLINE_MARGIN:g} of it. Choose a row to open the film."
)


unreadable = [item for item in items if not item.ok]
if unreadable:
    st.error(
        "Could not be screened:\n\n"
        + "\n".join(f"- **{ui_common.md(item.name)}**: {ui_common.md(item.error)}" for item in unreadable),
        icon=":material/error:",
    )


def _batch_reports() -> bytes:
    return report_pdf.batch_zip(
        [
            (
                report_pdf.report_name(item),
                report_pdf.film_report_pdf(
                    item, model_version=serving.version, include_identifiers=include_ids
                ),
            )
            for item in items
        ]
        + [("tb_screening_results.csv", screening_view.summary_csv(rows))]
    )


col_csv, col_zip, _ = st.columns([1, 1, 2])
col_csv.download_button(
    "Download results (CSV)",
    data=screening_view.summary_csv(rows),
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
if st.session_state.get("film_choice") not in shown_films:
    st.session_state["film_choice"] = shown_films[0]
chosen = st.selectbox(
    "Film",
    shown_films,
    key="film_choice",
    format_func=lambda index: screening_view.film_label(items[index]),
)
item = items[chosen]


ui_viewer.film_card(item, serving, include_ids)
st.caption(screening_view.DISCLAIMER)
