"""Drivers of the pipeline that are not the command line: the Airflow DAGs (``training/dags``).

The stages themselves are ``python -m cxr_core ingest|train|evaluate`` (see ``dvc.yaml``).
"""
