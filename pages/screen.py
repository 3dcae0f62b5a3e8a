"""Screen page: drop chest X-rays; a worklist in order of risk on top, then the chosen film in a viewer."""

import pandas as pd
import streamlit as st

import ui_common
from cxr_core.errors import CxrError
from cxr_core.imaging.display import VIEWER_SIDE, apply_window
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
            windowed = apply_window(item.image.pixels, level, width)
            contours = screening_view.lung_contours(item, windowed.shape[:2])
            show_lungs = contours is not None and st.toggle("Lung outline", value=True, key="show_lungs")
            picture = (
                overlay(windowed, prediction.heatmap, item.box, alpha, max_side=VIEWER_SIDE)
                if show_heatmap
                else windowed
            )
            st.plotly_chart(
                ui_common.film_figure(picture, contours if show_lungs else None, heat_legend=show_heatmap),
                config=ui_common.VIEWER_CONFIG,
                key="viewer",
            )
            st.caption(
                f"{item.image.width} x {item.image.height} pixels"
                + (
                    f", shown at {windowed.shape[1]} x {windowed.shape[0]}"
                    if windowed.shape[1] != item.image.width
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
            if screening_view.is_tb(item):
                st.error(f"**{screening_view.DECISION_TB}**", icon=":material/emergency:")
            else:
                st.success(f"**{screening_view.DECISION_NORMAL}**", icon=":material/check_circle:")
            shown, limit = screening_view.fmt_probability(prediction.probability, prediction.threshold)
            st.metric("TB probability", shown)
            st.caption(f"Called TB suspected at {limit} or above (model {serving.version}).")
            if screening_view.is_borderline(item):
                st.info("Close to the threshold: read the film with particular care.", icon=":material/info:")
            lung_text = screening_view.lung_evidence_text(item)
            if lung_text and "outside the lungs" in lung_text:
                st.warning(lung_text, icon=":material/visibility:")
            elif lung_text:
                st.caption(lung_text)
            if serving.site:
                st.caption(
                    f"Site profile **{serving.site['name']}**: threshold chosen on this site's own films."
                )
            with st.expander("Record the confirmed outcome"):
                # the labels set site thresholds and training data: an administrator's write, audited
                if ui_common.admin_gate("Recording a confirmed outcome"):
                    known = recorded_outcome(item.image.pixels)
                    options = {"tb": "TB confirmed", "not_tb": "Not TB", "unknown": "Unknown (withdraw)"}
                    picked = st.radio(
                        "This film turned out to be", list(options), format_func=options.get,
                        index=list(options).index(known) if known else 2, key="outcome_choice",
                    )  # fmt: skip
                    if st.button("Save the outcome", key="outcome_save"):
                        try:
                            saved = record_outcome(item.image.pixels, picked, actor=ui_common.actor())
                        except CxrError as error:
                            st.error(str(error))
                        else:
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
                    item, model_version=serving.version, include_identifiers=include_ids, alpha=alpha
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
