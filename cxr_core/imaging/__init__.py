"""Imaging: decoding PNG/JPEG/DICOM by content (``decode``, ``dicom``), plausibility checks, THE one path to model input (``preprocess``), display scaling (``display``).

Light on purpose: no TensorFlow, so the CLI, ingest workers and the dashboard's upload path import it cheaply.
"""
