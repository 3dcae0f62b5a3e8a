#!/usr/bin/env bash
# Create airflow-venv/ (Airflow 3 with the PostgreSQL driver and the Celery provider, celery and the redis
# client, all pinned in requirements-airflow.txt) beside the project's .venv.
# Airflow gets its own environment: the dashboard's .venv never sees it, and the DAG's tasks run the
# project's stages in .venv (see training/dags/tb_pipeline.py). Re-running is cheap: pip is skipped
# while requirements-airflow.txt is unchanged. The Docker image runs this same script.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x airflow-venv/bin/python ]] \
  || python3 -m venv airflow-venv 2>/dev/null \
  || { echo "python3 -m venv failed: install python3-venv" >&2; exit 1; }
stamp="airflow-venv/.installed-$(sha256sum requirements-airflow.txt | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  airflow-venv/bin/python -m pip install --quiet --upgrade pip
  airflow-venv/bin/python -m pip install --quiet -r requirements-airflow.txt
  airflow-venv/bin/python -m pip check
  rm -f airflow-venv/.installed-*
  touch "$stamp"
fi
