"""Where the project keeps things, overridable by environment so Docker volumes and tests can move them."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def models_dir() -> Path:
    """The model registry root; ``CXR_MODELS_DIR`` points it elsewhere (a Docker volume, a test's tmp dir)."""
    return Path(os.environ.get("CXR_MODELS_DIR", PROJECT_ROOT / "models"))


def jobs_dir() -> Path:
    """Where background retrain jobs keep their status and logs; survives dashboard restarts."""
    return Path(os.environ.get("CXR_JOBS_DIR", PROJECT_ROOT / "jobs"))


def sample_data_dir() -> Path:
    """The small attributed sample shipped for the demo and quick runs."""
    return PROJECT_ROOT / "data" / "sample"
