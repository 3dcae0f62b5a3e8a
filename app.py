"""TB chest X-ray screening dashboard: ``streamlit run app.py``.

This file only sets up the pages and the sidebar; each page is a thin layout over ``cxr_core``.
"""

from pathlib import Path

import streamlit as st
from PIL import Image

import ui_common

# A bundled PNG: a Material-icon favicon would be fetched from a font server, and a clinic may be offline.
FAVICON = Path(__file__).resolve().parent / "assets" / "favicon.png"

st.set_page_config(page_title="TB chest X-ray screening", page_icon=Image.open(FAVICON), layout="wide")

pages = [
    st.Page("pages/screen.py", title="Screen X-rays", icon=":material/radiology:", default=True),
    st.Page("pages/node.py", title="Films from the PACS", icon=":material/lan:"),
    st.Page("pages/evaluation.py", title="Evaluation", icon=":material/analytics:"),
    st.Page("pages/site.py", title="Local validation", icon=":material/location_on:"),
    st.Page("pages/retrain.py", title="Retrain", icon=":material/model_training:"),
    st.Page("pages/model.py", title="Model", icon=":material/description:"),
]
# The sidebar's page links are drawn by ui_common.sidebar (client.showSidebarNavigation is off in
# .streamlit/config.toml): Streamlit's own menu would first flash the raw file names of pages/.
page = st.navigation(pages, position="hidden")
ui_common.sidebar(pages)
page.run()
