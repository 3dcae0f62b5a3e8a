"""``params.yaml``: one file of settings read by every driver (CLI, ``dvc repro``, Retrain page, Airflow)."""

from pathlib import Path

import yaml

from cxr_core.paths import PROJECT_ROOT

DEFAULT_PARAMS = PROJECT_ROOT / "params.yaml"


def load_params(path: str | Path | None = None) -> dict:
    """The parsed params file (``params.yaml`` at the project root unless another is named)."""
    with open(path or DEFAULT_PARAMS) as handle:
        return yaml.safe_load(handle) or {}


def resolve_data_path(value: str | Path) -> Path:
    """Relative dataset paths in params.yaml are relative to the project, not to the caller's cwd."""
    path = Path(value).expanduser()
    return (path if path.is_absolute() else PROJECT_ROOT / path).resolve()
