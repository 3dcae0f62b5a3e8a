"""PACS node page: the films the DICOM node received from the PACS, newest first, each opened in the viewer."""

import pandas as pd
import streamlit as st

import ui_common
import ui_viewer
from cxr_core.errors import CxrError
from cxr_core.modelling.predictor import ScreenedImage
from ui import node_view, screening_view

st.title("Films from the PACS")

queue = node_view.node_queue()
if queue is None:
    st.info(
        "The DICOM node has not received any film yet. Start it beside your PACS with "
        "`python -m cxr_core node` (or `bash scripts/pacs.sh up` for a development Orthanc); see the README, "
        "*Connecting to your PACS*."
    )
    st.stop()

include_ids = st.checkbox(
    "Show patient identity from DICOM headers (name, ID, study date, accession number; also in exports)",
    value=False,
    key="include_ids",
    help="Off by default so identifiers do not end up in downloads or screenshots.",
)
st.button("Refresh", icon=":material/refresh:", key="node_refresh")

counts = node_view.counts(queue)
for column, (label, value) in zip(st.columns(len(counts)), counts.items(), strict=True):
    column.metric(label, value)
reasons = queue.skip_reasons()
if reasons:
    st.caption(
        "Not screened: " + "; ".join(f"{ui_common.md(reason)} ({count})" for reason, count in reasons.items())
    )

rows = node_view.worklist(queue, include_identifiers=include_ids)
if not rows:
    st.info("No film received yet.")
    st.stop()
films = [row["film"] for row in rows]


def _open_selected_row() -> None:
    state = st.session_state.get("node_worklist")
    selected = list(getattr(getattr(state, "selection", None), "rows", None) or [])
    shown = st.session_state.get("node_worklist_films")
    shown = shown if isinstance(shown, list) else []
    if selected and selected[0] < len(shown):
        st.session_state["node_film"] = shown[selected[0]]


st.session_state["node_worklist_films"] = films
st.dataframe(
    pd.DataFrame(rows),
    hide_index=True,
    key="node_worklist",
    on_select=_open_selected_row,
    selection_mode="single-row",
    column_config={
        "film": st.column_config.NumberColumn("Film #", format="%d"),
        "received": "Received",
        "status": "Status",
        "decision": "Result",
        "tb_probability": st.column_config.NumberColumn("TB probability", format="%.3f"),
        "problem": "Reason / last error",
        "delivered": "In the PACS since",
        "model_version": "Model",
        **screening_view.IDENTIFIER_LABELS,
    },
)
st.caption("Newest first. Choose a row to open the film in the viewer.")

if st.session_state.get("node_film") not in films:
    st.session_state["node_film"] = films[0]
chosen = st.selectbox("Film", films, key="node_film", format_func=lambda film: f"PACS film #{film}")
row = node_view.row_of(queue, chosen)
if row is None:  # gone from the list between two reruns
    st.stop()
if not row["film_path"]:
    st.warning(
        f"PACS film #{row['id']} was not screened: {ui_common.md(row['reason'])}", icon=":material/block:"
    )
    st.caption(screening_view.DISCLAIMER)
    st.stop()

serving, trouble = ui_common.serving_model_or_none()
if serving is None:
    st.error(f"The film cannot be shown with a result: {trouble}")
    st.stop()
try:
    predictor = ui_common.predictor_for(serving)
except CxrError as error:
    st.error(f"The model could not be loaded: {error}. Ask an administrator to roll back or retrain.")
    st.stop()
memo_key = (row["id"], include_ids, serving.sha256, serving.version)
memo = st.session_state.get("node_memo")
if (
    not isinstance(memo, dict)
    or memo.get("key") != memo_key
    or not isinstance(memo.get("item"), ScreenedImage)
):
    with st.spinner("Opening the film…"):
        memo = {
            "key": memo_key,
            "item": node_view.open_film(queue, row, predictor, include_identifiers=include_ids),
        }
    st.session_state["node_memo"] = memo
if note := node_view.node_result_note(row, predictor):
    st.info(note, icon=":material/published_with_changes:")
ui_viewer.film_card(memo["item"], serving, include_ids, film_key=f"pacs-{row['id']}")
st.caption(screening_view.DISCLAIMER)
