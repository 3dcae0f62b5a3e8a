"""Shared core of the TB chest X-ray screening tool.

Everything the dashboard, the command line, the DVC stages and the Airflow DAG need lives here, so
that training and serving can never drift apart again (the original system had two preprocessing
paths whose inputs differed). This package never imports streamlit, and TensorFlow is imported
lazily by the modules that need it so that reading images or parsing the DAG stays cheap.
"""

import os

# TensorFlow's C++ start-up chatter buries the lines a user needs (progress, errors) in every log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
