"""Pipeline: dataset discovery, ingest, train, evaluate, the chained run with registration, and background jobs.

Every driver (CLI and ``dvc repro``, the Retrain page's job process, the Airflow DAG) calls these stage
functions; none re-implements a stage.
"""
