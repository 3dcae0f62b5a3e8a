# syntax=docker/dockerfile:1
# Images of the TB chest X-ray screening tool; docker-compose.yml builds both targets:
#   dashboard  Streamlit on port 8501 of the container, non-root, health-checked; publish it only on
#              127.0.0.1 and put a TLS proxy in front (docker-compose.yml)  docker build --target dashboard .
#   airflow    Airflow 3 (api-server, scheduler, dag-processor) with the project and its .venv, so the
#              DAG's tasks run the same stage code                      docker build --target airflow .
# The environments are built by the same scripts developers and CI run (scripts/setup.sh,
# scripts/setup_airflow.sh) from the same pinned files, in throw-away stages; the final images get
# only the finished virtual environments and the code (.dockerignore lists what the code is).

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# ---------------------------------------------------------------- base: interpreter + unprivileged user
# uid/gid 10001 (`cxr`) runs every service; numeric so volumes and `docker exec` agree on it.
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2
RUN groupadd --system --gid 10001 cxr \
    && useradd --system --uid 10001 --gid cxr --create-home --home-dir /home/cxr --shell /usr/sbin/nologin cxr
WORKDIR /app

# ---------------------------------------------------------------- project environment (.venv)
FROM base AS project-env
COPY requirements.txt requirements-dev.txt constraints.txt ./
COPY scripts/setup.sh scripts/setup.sh
RUN bash scripts/setup.sh

# ---------------------------------------------------------------- Airflow environment (airflow-venv)
FROM base AS airflow-env
COPY requirements-airflow.txt ./
COPY scripts/setup_airflow.sh scripts/setup_airflow.sh
RUN bash scripts/setup_airflow.sh

# ---------------------------------------------------------------- dashboard
FROM base AS dashboard
COPY --from=project-env /app/.venv /app/.venv
# The code stays root-owned (read-only for the app); only the registry, job and upload folders are
# writable (uploads: dataset zips and the confirmed-outcome set, see cxr_core/pipeline/outcomes.py).
COPY . /app
RUN mkdir -p /app/models /app/jobs /app/uploads \
    && chown 10001:10001 /app/models /app/jobs /app/uploads
ENV PATH=/app/.venv/bin:$PATH \
    CXR_MODELS_DIR=/app/models \
    CXR_JOBS_DIR=/app/jobs \
    CXR_UPLOADS_DIR=/app/uploads \
    CXR_DATASET_ROOTS=/data:/app/data:/app/uploads
USER 10001:10001
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]
CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true"]

# ---------------------------------------------------------------- Airflow services
FROM base AS airflow
COPY --from=project-env /app/.venv /app/.venv
COPY --from=airflow-env /app/airflow-venv /app/airflow-venv
COPY . /app
RUN mkdir -p /app/models /opt/airflow/logs /opt/airflow/work /opt/airflow/auth \
    && chown 10001:10001 /app/models /opt/airflow /opt/airflow/logs /opt/airflow/work /opt/airflow/auth
ENV PATH=/app/airflow-venv/bin:$PATH \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/app/training/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    CXR_PROJECT_ROOT=/app \
    CXR_PROJECT_PYTHON=/app/.venv/bin/python \
    CXR_AIRFLOW_WORK_DIR=/opt/airflow/work \
    CXR_MODELS_DIR=/app/models
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["airflow"]
CMD ["version"]
