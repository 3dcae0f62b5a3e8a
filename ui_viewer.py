"""The film viewer shared by the pages that open a film (Screen X-rays, PACS node): one layout, one place.

The Screen page's film card lives here so that the PACS node page opens a film received from the PACS
in the same viewer as a dropped file: zoom kept across every control, one result vocabulary, the site
profile beside the decision, the evidence figure, the admin-only outcome record.
"""

import streamlit as st

import ui_common
from cxr_core.errors import CxrError
from cxr_core.imaging.display import VIEWER_SIDE, display_gray
from cxr_core.modelling.gradcam import overlay
from cxr_core.pipeline.outcomes import record_outcome, recorded_outcome
from ui import report_pdf, screening_view


def _figure(film_key: str, film, item, contours):
    """The viewer's figure, built once per film and session (the same figure keeps the chart, and its zoom)."""
    cache = st.session_state.get("viewer_figure")
    if isinstance(cache, tuple) and len(cache) == 3 and cache[0] == (film_key, contours is not None):
        return cache[2]
    heat = screening_view.heat_layer(item.image.pixels, item.prediction.heatmap, item.box)
    figure = ui_common.film_figure(film, heat, contours, film_key=film_key)
    st.session_state["viewer_figure"] = ((film_key, contours is not None), None, figure)
    return figure



VIEWER_PRELOAD = "viewer_preload"  # the container key of the hidden chart that loads Plotly early


def preload() -> None:
    """An empty chart, hidden, drawn while the films of a drop are scored.

    The browser loads Plotly's script (4.7 MB, most of it evaluated on the page's one thread) only when a
    page first draws a chart. That took place after the server had sent the viewer, between the drop and
    the film on the screen; started with the scoring, it overlaps the server's work. The chart has no axes
    and no traces, so drawing it costs next to nothing, and the page removes it once the films are scored.
    """
    import plotly.graph_objects as go

    empty = go.Figure(layout={"xaxis": {"visible": False}, "yaxis": {"visible": False}, "height": 10})
    st.html(f"<style>.st-key-{VIEWER_PRELOAD} {{ display: none; }}</style>")  # before the chart: never shown
    with st.container(key=VIEWER_PRELOAD):
        st.plotly_chart(empty, config=ui_common.VIEWER_CONFIG, key="viewer_preload_chart")


@st.fragment
def film_card(item, serving, include_ids: bool, film_key: str, fingerprint: str | None = None) -> None:
    """The chosen film: viewer with heatmap and window/level on the left, the result and exports right.

    ``serving`` is the model in use (``ui_common.serving_model_or_none``), ``include_ids`` the identity
    switch, ``film_key`` names the film for the viewer's figure cache (its zoom survives every control),
    ``fingerprint`` is the network input's fingerprint (to mark films that fitted the active site profile).

    A fragment: a control of the card (window/level, opacity, the switches, the outcome form) reruns the
    card alone, not the page around it, whose worklist, table and exports do not depend on them.
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
                    _figure(f"{film_key}:{serving.version}", film, item, contours),
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
                    "Heatmap: Grad-CAM (the network's evidence for TB; for this network its class activation "
                    "map), coloured in units of the TB probability (the same scale for every film): the "
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
            if screening_view.fitted_on_site(serving.site, fingerprint):
                st.warning(screening_view.FITTED_NOTE, icon=":material/history:")
            lung_text = screening_view.lung_evidence_text(item)
            if lung_text:
                st.caption(lung_text)
            unusual = screening_view.evidence_warning(item, serving.evidence_reference)
            if unusual:
                st.warning(unusual, icon=":material/visibility:")
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
                    item, model_version=serving.version, include_identifiers=include_ids, alpha=alpha,
                    site=serving.site, evidence_reference=serving.evidence_reference,
                    fitted=screening_view.fitted_on_site(serving.site, fingerprint),
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
