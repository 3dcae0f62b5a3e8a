"""Test helpers for the admin side: a named admin account, a setup promotion, a model that differs.

A setup promotion goes through the real gate check with an explicit override reason (audited like an
operator's), so tests that are not about the gate still exercise the one promotion path.
"""

import json
import shutil
from pathlib import Path

from cxr_core import auth

ADMIN = "admin"
PASSWORD = "correct-horse-battery-staple-7"
SETUP_REASON = "test setup: this test is not about the quality gate"


def admin_account(monkeypatch, tmp_path: Path, name: str = ADMIN, password: str = PASSWORD) -> Path:
    """A users file holding one administrator, used by this test only (no developer's own secrets)."""
    monkeypatch.delenv(auth.ENV_PASSWORD, raising=False)
    monkeypatch.setenv(auth.ENV_SECRETS_FILE, str(tmp_path / "no-secrets.toml"))
    monkeypatch.setenv(auth.ENV_USERS_FILE, str(tmp_path / "admin_users.toml"))
    auth.add_user(name, password)
    auth.reset_throttle()
    return tmp_path / "admin_users.toml"


def promote_for_setup(registry, version: str, actor: str | None = None) -> None:
    registry.promote(version, actor=actor, override_reason=SETUP_REASON)


def shifted_model(candidate_dir: Path, out_dir: Path, logit_shift: float = 1.5) -> Path:
    """A copy of a candidate whose network says something else: the output bias moved by ``logit_shift``.

    Registering a byte-identical copy under a new name lets a test that "serves the new version" pass
    while the old weights are still in use; these weights give other probabilities on every film.
    """
    from cxr_core.modelling.networks import load_model, save_model

    shutil.copytree(candidate_dir, out_dir)
    model = load_model(out_dir / "model.keras")
    layer = model.get_layer("tb_probability")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, bias + logit_shift])
    (out_dir / "model.keras").unlink()
    save_model(model, out_dir / "model.keras")
    meta = json.loads((out_dir / "metadata.json").read_text())
    meta.pop("model_sha256", None)  # the registry records the new file's own
    meta.pop("version", None)
    (out_dir / "metadata.json").write_text(json.dumps(meta))
    return out_dir
