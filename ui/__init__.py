"""The dashboard's view-models: what each page shows, computed without streamlit so it can be tested directly.

Pages import from here and from ``cxr_core``; ``cxr_core`` never imports this package.
"""
