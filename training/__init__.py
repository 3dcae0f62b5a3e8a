"""Thin command-line stages over :mod:`cxr_core`, run by ``dvc repro``, the Retrain page and Airflow."""
