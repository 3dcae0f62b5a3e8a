"""``params.yaml``: one file of settings read by every driver (CLI, ``dvc repro``, Retrain page, Airflow)."""

import os
from pathlib import Path

import yaml

from cxr_core.paths import PROJECT_ROOT

DEFAULT_PARAMS = PROJECT_ROOT / "params.yaml"


def load_params(path: str | Path | None = None) -> dict:
    """The parsed params file: the one named, else ``$CXR_PARAMS_FILE``, else the project's ``params.yaml``.

    The environment variable lets a deployment (Docker, Airflow) give the dashboard and the DAG one
    shared file, so both apply the same quality gate.
    """
    with open(path or os.environ.get("CXR_PARAMS_FILE") or DEFAULT_PARAMS) as handle:
        return yaml.safe_load(handle) or {}


def resolve_data_path(value: str | Path) -> Path:
    """Relative dataset paths in params.yaml are relative to the project, not to the caller's cwd."""
    path = Path(value).expanduser()
    return (path if path.is_absolute() else PROJECT_ROOT / path).resolve()
