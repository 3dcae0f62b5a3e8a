"""Model page: the model card of the version in use, and every registered version."""

import pandas as pd
import streamlit as st

import ui_common
from cxr_core.errors import CxrError
from cxr_core.registry import audit
from ui import evaluation_view, versions_view

st.title("About the model")

registry = ui_common.registry()
rows = versions_view.version_rows(registry)
if not rows:
    st.info("No model is registered yet.")
    st.stop()
try:
    current = registry.current_version()
except CxrError as error:
    st.error(str(error))
    current = None

if current:
    st.markdown(f"The model in use is **{current}**.")
else:
    st.warning("No version has been promoted to be the model in use.")

st.subheader("Registered versions")
st.dataframe(
    pd.DataFrame(rows),
    hide_index=True,
    column_config={
        "ROC AUC": st.column_config.NumberColumn(format="%.3f"),
        "sensitivity": st.column_config.NumberColumn(format="%.3f"),
        "specificity": st.column_config.NumberColumn(format="%.3f"),
        "threshold": st.column_config.NumberColumn(format="%.3f"),
    },
)

versions = [row["version"] for row in rows]
chosen = st.selectbox(
    "Model card of version",
    versions,
    index=versions.index(current) if current in versions else 0,
    format_func=lambda v: f"{v} (in use)" if v == current else v,
    key="card_version",
)
try:
    card = evaluation_view.load_evaluation(registry, chosen).card
except CxrError as error:
    st.error(str(error))
    card = None
with st.container(border=True):
    if card:
        st.markdown(evaluation_view.card_for_display(card))
    else:
        st.info("This version has no model card.")

st.subheader("Audit trail")
chain = audit.verify(registry.root)  # every line links to the one before it: an edit breaks the chain
if chain.ok:
    st.success(chain.message(), icon=":material/link:")
else:
    st.error(chain.message() + " Check the file and `python -m cxr_core audit verify`.", icon=":material/link_off:")
audit_rows = versions_view.audit_rows(registry)
if audit_rows:
    st.dataframe(pd.DataFrame(audit_rows), hide_index=True)
    st.caption("Every retrain start and cancel, gate verdict, promotion and rollback, newest first.")
else:
    st.caption("No model-changing action has been recorded yet.")
