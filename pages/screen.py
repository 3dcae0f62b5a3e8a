"""Screen page: drop chest X-rays, get a TB probability, a plain decision and a Grad-CAM overlay each."""

import pandas as pd
import streamlit as st

import ui_common
from cxr_core.errors import CxrError
from cxr_core.modelling.gradcam import overlay
from ui import screening_view

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
col_alpha, col_ids = st.columns([2, 3])
alpha = col_alpha.slider(
    "Heatmap opacity", 0.0, 1.0, 0.4, 0.05, help="0 shows the X-ray alone, 1 the heatmap alone."
)
include_ids = col_ids.checkbox(
    "Show patient name and ID from DICOM headers (also in the CSV)",
    value=False,
    help="Off by default so identifiers do not end up in downloads or screenshots.",
)

if not uploads:
    st.info(
        f"Results use model **{serving.version}**: an image is called *TB suspected* when its TB "
        f"probability is at least **{serving.threshold:.3f}**, the operating point chosen on validation "
        "images for high sensitivity. The heatmap shows where the model found evidence for TB."
    )
    st.stop()

try:
    predictor = ui_common.predictor_for(serving)
except CxrError as error:
    st.error(f"The model could not be loaded: {error}. Ask an administrator to roll back or retrain.")
    st.stop()

# Score each batch once; moving the opacity slider only redraws.
batch_key = (tuple((f.file_id, f.name, f.size) for f in uploads), serving.sha256, include_ids)
memo = st.session_state.get("screen_memo")
if not memo or memo["key"] != batch_key:
    with st.spinner(f"Screening {len(uploads)} image(s)…"):
        items = predictor.screen([(f.name, f.getvalue()) for f in uploads], include_identifiers=include_ids)
    memo = {"key": batch_key, "items": [screening_view.shrink_for_display(item) for item in items]}
    st.session_state["screen_memo"] = memo
items = memo["items"]
rows = screening_view.summary_rows(items, predictor, include_identifiers=include_ids)

if len(items) > 1:
    counts = screening_view.batch_counts(items)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Images", counts["total"])
    c2.metric("TB suspected", counts["tb"])
    c3.metric("No TB signs", counts["normal"])
    c4.metric("Could not be read", counts["failed"])

for item in items:
    with st.container(border=True):
        st.markdown(f"#### {ui_common.md(item.name)}")
        if not item.ok:
            st.error(f"**{ui_common.md(item.name)}** could not be screened: {item.error}")
            continue
        prediction = item.prediction
        col_orig, col_cam, col_result = st.columns([3, 3, 2])
        col_orig.image(item.image.pixels, caption="Original", width="stretch")
        col_cam.image(
            overlay(item.image.pixels, prediction.heatmap, item.box, alpha),
            caption="Grad-CAM: red = strongest evidence for TB",
            width="stretch",
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
            for warning in item.warnings:
                st.warning(warning, icon=":material/warning:")
            details = screening_view.image_details(item, include_identifiers=include_ids)
            with st.expander("Image details" + (" (DICOM)" if item.image.format == "DICOM" else "")):
                st.markdown("  \n".join(f"**{label}:** {ui_common.md(value)}" for label, value in details))

st.subheader("Batch summary")
st.caption(
    f"Model {serving.version}, TB suspected at a probability of {serving.threshold:.3f} or above. "
    "Click a column header to sort."
)
table = pd.DataFrame(rows)
st.dataframe(
    table,
    hide_index=True,
    column_config={
        "file": "File",
        "decision": "Result",
        "tb_probability": st.column_config.NumberColumn("TB probability", format="%.3f"),
        "warnings": "Warnings",
        "error": "Problem",
        "threshold": None,
        "model_version": None,
        "patient_name": "Patient name",
        "patient_id": "Patient ID",
        "patient_birth_date": "Birth date",
        "ok": None,
        "label": None,
    },
)
st.download_button(
    "Download results (CSV)",
    data=screening_view.summary_csv(rows),
    file_name="tb_screening_results.csv",
    mime="text/csv",
    on_click="ignore",
    icon=":material/download:",
)
st.caption(screening_view.DISCLAIMER)
