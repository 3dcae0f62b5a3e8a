"""TB chest X-ray screening dashboard: ``streamlit run app.py``.

This file only sets up the pages and the sidebar; each page is a thin layout over ``cxr_core``.
"""

import streamlit as st

import ui_common

st.set_page_config(
    page_title="TB chest X-ray screening",
    page_icon=":material/radiology:",
    layout="wide",
)

pages = [
    st.Page("pages/screen.py", title="Screen X-rays", icon=":material/radiology:", default=True),
    st.Page("pages/evaluation.py", title="Evaluation", icon=":material/analytics:"),
    st.Page("pages/retrain.py", title="Retrain", icon=":material/model_training:"),
    st.Page("pages/model.py", title="Model", icon=":material/description:"),
]
page = st.navigation(pages)
ui_common.sidebar()
page.run()
