"""Screen page: drop chest X-rays; a worklist in order of risk on top, then the chosen film in a viewer."""

import pandas as pd
import streamlit as st

import ui_common
from cxr_core.errors import CxrError
from cxr_core.imaging.display import VIEWER_SIDE, display_gray
from cxr_core.modelling.gradcam import overlay
from cxr_core.pipeline.outcomes import record_outcome, recorded_outcome
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
todo = files[len(memo["films"]) :]
if todo:
    start = len(memo["films"])
    names = [
        upload.name if include_ids else screening_view.pseudonym(start + i + 1) for i, upload in enumerate(todo)
    ]
    with st.spinner(f"Screening {len(todo)} image(s)…"):
        scored = predictor.screen(
            [(name, upload.data) for name, upload in zip(names, todo, strict=True)],
            include_identifiers=include_ids,
        )
    from cxr_core.registry.sites import film_fingerprint

    memo["fingerprints"] += [film_fingerprint(i.model_input) if i.model_input is not None else None for i in scored]
    memo["items"] += [screening_view.shrink_for_display(item) for item in scored]
    memo["names"] += names
    memo["films"] += [upload.sha256 for upload in todo]
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


def _figure(film_key: str, film, item, contours):
    """The viewer's figure, built once per film and session (the same figure keeps the chart, and its zoom)."""
    cache = st.session_state.get("viewer_figure")
    if isinstance(cache, tuple) and len(cache) == 3 and cache[0] == (film_key, contours is not None):
        return cache[2]
    heat = screening_view.heat_layer(item.image.pixels, item.prediction.heatmap, item.box)
    figure = ui_common.film_figure(film, heat, contours, film_key=film_key)
    st.session_state["viewer_figure"] = ((film_key, contours is not None), None, figure)
    return figure


def film_card(item) -> None:
    """The chosen film: viewer with heatmap and window/level on the left, the result and exports right."""
    with st.container(border=True):
        st.markdown(f"#### {ui_common.md(item.name)}")
        if include_ids:
            who = screening_view.identity_lines(item)
            st.markdown(
                " · ".join(f"**{label}:** {ui_common.md(value)}" for label, value in who)
                if who
                else "_No patient identity in this file._"
            )
        if not item.ok:
            st.error(f"**{ui_common.md(item.name)}** could not be screened: {item.error}")
            return
        prediction = item.prediction
        col_view, col_result = st.columns([3, 1])
        with col_view:
            c1, c2, c3, c4, c5 = st.columns([1.5, 2, 2, 2, 1])
            show_heatmap = c1.toggle("Heatmap", value=True, key="show_heatmap")
            alpha = c2.slider(
                "Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="alpha", disabled=not show_heatmap,
                help="0 shows the X-ray alone, 1 the heatmap alone.",
            )  # fmt: skip
            level = c3.slider(
                "Level (brightness)", 0, 255, 128, key="wl_level", help="The grey shown at mid-screen."
            )
            width = c4.slider(
                "Window (contrast)",
                1,
                256,
                256,
                key="wl_width",
                help="Narrower = more contrast in a smaller range.",
            )

            def _reset_view() -> None:
                st.session_state["wl_level"], st.session_state["wl_width"] = 128, 256

            c5.button("Reset", on_click=_reset_view, key="wl_reset", help="Back to the film's own contrast.")
            film = display_gray(item.image.pixels, VIEWER_SIDE)
            contours = screening_view.lung_contours(item, film.shape[:2])
            show_lungs = contours is not None and st.toggle("Lung outline", value=True, key="show_lungs")
            # The figure depends on the film only; the controls reach the browser as a style, so the chart is
            # not drawn anew and the reader's zoom and pan stay (a new figure would reset them).
            st.markdown(
                ui_common.viewer_style(level, width, alpha, show_heatmap, bool(show_lungs)), unsafe_allow_html=True
            )
            with st.container(key=ui_common.VIEWER_BOX):
                st.plotly_chart(
                    _figure(f"{memo['films'][chosen]}:{serving.version}", film, item, contours),
                    config=ui_common.VIEWER_CONFIG,
                    key="viewer",
                )
            st.caption(
                f"{item.image.width} x {item.image.height} pixels"
                + (
                    f", shown at {film.shape[1]} x {film.shape[0]}"
                    if film.shape[1] != item.image.width
                    else ""
                )
                + ". Scroll or drag to zoom, use the pan tool to move, double-click to see the whole film. "
                + (
                    "Heatmap colour is in units of the TB probability (the same scale for every film): the "
                    "strongest spot shows the film's probability, blue-green about 0.3, yellow 0.6, red near 1, "
                    "and a film scored 0.07 stays almost clear. Where the colour sits is where the network found "
                    "what drove its score; it is not a lesion outline."
                    if show_heatmap
                    else ""
                )
            )
        with col_result:
            decision = screening_view.decision_text(item)
            if screening_view.is_tb(item):
                st.error(f"**{decision}**: {screening_view.ACTIONS[decision]}", icon=":material/emergency:")
            elif screening_view.is_borderline(item):
                st.warning(f"**{decision}**: {screening_view.ACTIONS[decision]}", icon=":material/info:")
            else:
                st.success(f"**{decision}**", icon=":material/check_circle:")
            shown, limit = screening_view.fmt_probability(prediction.probability, prediction.threshold)
            st.metric("TB probability", shown)
            st.caption(
                f"Called TB suspected at {limit} or above (model {serving.version}); decided at the "
                f"{screening_view.site_text(serving.site, serving.threshold)}."
            )
            if screening_view.fitted_on_site(serving.site, memo["fingerprints"][chosen]):
                st.warning(screening_view.FITTED_NOTE, icon=":material/history:")
            lung_text = screening_view.lung_evidence_text(item)
            if lung_text:
                st.caption(lung_text)
            unusual = screening_view.evidence_warning(item, serving.evidence_reference)
            if unusual:
                st.warning(unusual, icon=":material/visibility:")
            with st.expander("Record the confirmed outcome"):
                known = recorded_outcome(item.image.pixels)
                options = {"tb": "TB confirmed", "not_tb": "Not TB", "unknown": "Unknown (withdraw)"}
                picked = st.radio(
                    "This film turned out to be", list(options), format_func=options.get,
                    index=list(options).index(known) if known else 2, key="outcome_choice",
                )  # fmt: skip
                if st.button("Save the outcome", key="outcome_save"):
                    saved = record_outcome(item.image.pixels, picked, actor=ui_common.actor())
                    st.success(f"Saved: the local set now holds {saved['films_in_set']} confirmed films.")
                st.caption(
                    "Kept as pixels only (no name, ID or DICOM header), for this clinic's own validation."
                )
            for warning in item.warnings:
                st.warning(warning, icon=":material/warning:")
            details = screening_view.image_details(item, include_identifiers=include_ids)
            with st.expander("Image details" + (" (DICOM)" if item.image.format == "DICOM" else "")):
                st.markdown("  \n".join(f"**{label}:** {ui_common.md(value)}" for label, value in details))
            st.download_button(
                "Report (PDF)",
                data=lambda: report_pdf.film_report_pdf(
                    item, model_version=serving.version, include_identifiers=include_ids, alpha=alpha,
                    site=serving.site, evidence_reference=serving.evidence_reference,
                    fitted=screening_view.fitted_on_site(serving.site, memo["fingerprints"][chosen]),
                ),
                file_name=report_pdf.report_name(item),
                mime="application/pdf",
                on_click="ignore",
                icon=":material/picture_as_pdf:",
                key="download_pdf",
            )
            if item.image.format == "DICOM":
                if include_ids and item.image.metadata.get("StudyInstanceUID"):
                    from cxr_core.imaging.dicom_out import secondary_capture

                    st.download_button(
                        "Result for PACS (DICOM)",
                        data=lambda: secondary_capture(
                            overlay(
                                item.image.pixels, prediction.heatmap, item.box, alpha, max_side=VIEWER_SIDE
                            ),
                            item.image.metadata,
                            screening_view.result_text(item, serving.version),
                            model_version=serving.version,
                        ),
                        file_name=f"{screening_view.report_stem(item.name)}_tb_result.dcm",
                        mime="application/dicom",
                        on_click="ignore",
                        icon=":material/cloud_upload:",
                        key="download_dicom",
                        help="A Secondary Capture of the overlay, filed with the film's study (same Study "
                        "Instance UID, new series).",
                    )
                else:
                    st.caption(
                        "Switch on patient identity to export the result as DICOM for the PACS: it must carry "
                        "the study's identity to be filed with it."
                    )


film_card(item)
st.caption(screening_view.DISCLAIMER)
