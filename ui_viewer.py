"""The film viewer shared by the pages that open a film (Screen X-rays, PACS node): one layout, one place.

Moved here unchanged from pages/screen.py (where it was a local function) so that the PACS node page
opens a film received from the PACS in the same viewer as a dropped file.
"""

import streamlit as st

import ui_common
from cxr_core.errors import CxrError
from cxr_core.imaging.display import VIEWER_SIDE, apply_window
from cxr_core.modelling.gradcam import overlay
from cxr_core.pipeline.outcomes import record_outcome, recorded_outcome
from ui import report_pdf, screening_view


def film_card(item, serving, include_ids: bool) -> None:
    """The chosen film: viewer with heatmap and window/level on the left, the result and exports right.

    ``serving`` is the model in use (``ui_common.serving_model_or_none``), ``include_ids`` the identity switch.
    """
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

