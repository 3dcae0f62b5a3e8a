"""Every way to promote goes through one gate: the CLI's promote and register --promote, pipeline --promote,
and lungs-train --promote are refused without a current pass for the exact weights, unless overridden (audited)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_store_and_gate import make_candidate

from cxr_core import cli
from cxr_core.registry import audit
from cxr_core.registry.gate import LUNG_PROBES
from cxr_core.registry.store import Registry

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"

PROJECT = Path(__file__).resolve().parents[2]


def run_cli(env_models: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CXR_MODELS_DIR": str(env_models), "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "cxr_core", *args], capture_output=True, text=True, env=env,
                          cwd=PROJECT, timeout=120)  # fmt: skip


def test_models_promote_by_name_is_refused_and_an_override_is_audited(tmp_path):
    models = tmp_path / "models"
    version = Registry(models).register(make_candidate(tmp_path, "a"), version="v-unjudged")
    refused = run_cli(models, "models", "promote", version)
    assert refused.returncode == 2 and "no quality-gate verdict" in refused.stderr
    assert Registry(models).current_version() is None
    overridden = run_cli(models, "models", "promote", version, "--override-gate", "vendor model, validated offline")
    assert overridden.returncode == 0, overridden.stderr
    assert Registry(models).current_version() == version
    promote_lines = [e for e in audit.read(models) if e["action"] == "promote"]
    assert [e["outcome"].split(":")[0] for e in promote_lines] == ["ok", "refused"]
    assert promote_lines[0]["override_gate"] == "vendor model, validated offline"
    assert promote_lines[0]["model_sha256"] == Registry(models).metadata(version)["model_sha256"]


def test_register_with_promote_registers_but_does_not_promote_without_a_verdict(tmp_path):
    models = tmp_path / "models"
    done = run_cli(models, "models", "register", str(make_candidate(tmp_path, "b")), "--promote")
    assert done.returncode == 2 and "cannot be promoted" in done.stderr
    registry = Registry(models)
    assert len(registry.versions()) == 1 and registry.current_version() is None


def test_pipeline_promote_always_is_gone():
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["pipeline", "--promote", "always"])
    assert exit_info.value.code == 2
    args = cli.build_parser().parse_args(["pipeline", "--override-gate", "reason"])
    assert args.promote == "gate" and args.override_gate == "reason"


@pytest.fixture
def lung_env(tmp_path, monkeypatch):
    """The lungs-train command with its training replaced by a folder of known figures: what is under test
    is the registration and the gate, not the U-Net (trained for real in tests/pipeline)."""
    from cxr_core.pipeline import lung_training

    data = tmp_path / "roots" / "lungs"
    data.mkdir(parents=True)
    (data / "manifest.csv").write_text("source,image,mask\n")
    for label in ("Normal", "Tuberculosis"):  # a labelled dataset for --census (the stub never reads it)
        (tmp_path / "roots" / "films" / label).mkdir(parents=True)
        shutil.copy(next((SAMPLE / label).glob("*.png")), tmp_path / "roots" / "films" / label)
    monkeypatch.setenv("CXR_DATASET_ROOTS", str(tmp_path / "roots"))
    monkeypatch.setenv("CXR_LUNG_MODELS_DIR", str(tmp_path / "lungs-registry"))
    monkeypatch.setenv("CXR_MODELS_DIR", str(tmp_path / "models"))
    figures = {}
    refusals = {"probes": dict.fromkeys(LUNG_PROBES, "refused"),
                "films": {"data_name": "cxr", "checked": 1000, "refused": 0, "refused_by_source": {}}}  # fmt: skip

    def trained(data_root, out_dir, params, census_data=None):
        assert census_data is not None  # the command always asks for the census the gate needs
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.keras").write_bytes(b"lung weights " + json.dumps([figures, refusals]).encode())
        metadata = {"held_out": figures, "cross_source": {}, "census": refusals, "parameters": 1,
                    "train_seconds": 1.0, "threshold": 0.5}  # fmt: skip
        (out / "metadata.json").write_text(json.dumps(metadata))
        return metadata

    monkeypatch.setattr(lung_training, "run_lung_train", trained)
    return tmp_path, figures, refusals


def test_lungs_train_promotes_only_a_lung_model_that_passes_its_gate(lung_env, capsys):
    tmp_path, figures, _ = lung_env
    data = str(tmp_path / "roots" / "lungs")
    figures.update(jsrt={"dice_mean": 0.97}, shenzhen={"dice_mean": 0.62})
    code = cli.main(["lungs-train", "--data", data, "--census", str(tmp_path / "roots" / "films"), "--out", str(tmp_path / "w1"), "--register", "--promote"])
    assert code == 2 and "held-out Dice on shenzhen is 0.620, below the floor 0.90" in capsys.readouterr().err
    lungs = Registry(tmp_path / "lungs-registry", kind="lungs")
    assert lungs.current_version() is None and len(lungs.versions()) == 1

    figures.update(shenzhen={"dice_mean": 0.95})
    code = cli.main(["lungs-train", "--data", data, "--census", str(tmp_path / "roots" / "films"), "--out", str(tmp_path / "w2"), "--register", "--promote"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["promoted"] and lungs.current_version() == summary["version"]
    assert lungs.verdict(summary["version"])["passed"] is True
    assert cli.main(["lungs-train", "--data", data, "--promote"]) == 2  # --promote needs --register


def test_a_lung_model_that_refuses_real_films_or_accepts_a_picture_with_no_lungs_is_not_promoted(lung_env, capsys):
    """Dice alone passed 96 px networks that joined both lungs through the heart on real TB films."""
    tmp_path, figures, refusals = lung_env
    data = str(tmp_path / "roots" / "lungs")
    figures.update(jsrt={"dice_mean": 0.97}, shenzhen={"dice_mean": 0.956})
    lungs = Registry(tmp_path / "lungs-registry", kind="lungs")

    refusals["films"].update(refused=10, refused_by_source={"rahmandb": 9, "da": 1})
    refusals["probes"]["gradient"] = "accepted"
    code = cli.main(["lungs-train", "--data", data, "--census", str(tmp_path / "roots" / "films"), "--out", str(tmp_path / "w1"), "--register", "--promote"])
    err = capsys.readouterr().err
    assert code == 2 and lungs.current_version() is None
    assert "finds lungs in pictures with none: gradient" in err
    assert "refuses 10 of 1000 real X-rays as not a chest (da 1, rahmandb 9), above the 0.2% allowed" in err  # as registered: sorted

    refusals["probes"]["gradient"] = "refused"
    refusals["films"].update(refused=2, refused_by_source={"rahmandb": 2})  # 0.2 %: at the limit, allowed
    code = cli.main(["lungs-train", "--data", data, "--census", str(tmp_path / "roots" / "films"), "--out", str(tmp_path / "w2"), "--register", "--promote"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert lungs.current_version() == summary["version"] and summary["census"]["films"]["refused"] == 2
    checks = lungs.verdict(summary["version"])["checks"]
    assert "all 9 pictures with no lungs in them are refused" in checks
    assert "2 of 1000 real X-rays refused (cxr)" in checks


def test_the_lung_gate_refuses_a_model_never_tried_on_pictures_or_films():
    from cxr_core.registry.gate import lung_gate

    verdict = lung_gate({"held_out": {"shenzhen": {"dice_mean": 0.96}}})
    assert not verdict.passed
    assert verdict.reasons == ["the lung model was not tried on pictures with no lungs in them",
                               "the lung model was not tried on a dataset of real X-rays"]  # fmt: skip


def test_the_lung_gate_wants_every_probe_and_enough_real_films():
    """Twenty sample films with none refused say nothing about a 0.2 % limit; two probes are not nine."""
    from cxr_core.modelling.lung_probes import non_chest_pictures
    from cxr_core.registry.gate import LUNG_PROBES, lung_gate

    assert set(LUNG_PROBES) == set(non_chest_pictures())  # the gate's list is the probes' own
    census = {"probes": {"gradient": "refused", "noise": "refused"},
              "films": {"data_name": "sample", "checked": 20, "refused": 0, "refused_by_source": {}}}  # fmt: skip
    verdict = lung_gate({"held_out": {"shenzhen": {"dice_mean": 0.96}}, "census": census})
    assert not verdict.passed and len(verdict.reasons) == 2
    assert verdict.reasons[0].startswith("the lung model was not tried on every picture with no lungs: text page")
    assert "tried on 20 real X-rays only (sample; 0 it trained on left out), fewer than the 500 needed" in verdict.reasons[1]
    census["probes"] = dict.fromkeys(LUNG_PROBES, "refused")
    census["films"]["checked"] = 500
    assert lung_gate({"held_out": {"shenzhen": {"dice_mean": 0.96}}, "census": census}).passed


def test_the_lung_gate_refuses_a_census_that_counted_the_films_a_model_was_distilled_on():
    from cxr_core.registry.gate import LUNG_PROBES, lung_gate

    census = {"probes": dict.fromkeys(LUNG_PROBES, "refused"),
              "films": {"data_name": "cxr", "checked": 1700, "refused": 0, "seen_in_training": 0}}  # fmt: skip
    metadata = {"held_out": {"shenzhen": {"dice_mean": 0.96}}, "census": census,
                "distilled": {"data_name": "cxr", "films": 600}}  # fmt: skip
    verdict = lung_gate(metadata)
    assert not verdict.passed
    assert verdict.reasons == ["the census on cxr counted films the lung model was distilled on: it must judge "
                               "films the model never trained on"]  # fmt: skip
    census["films"]["seen_in_training"] = 600
    assert lung_gate(metadata).passed
    metadata["distilled"]["data_name"] = "another"  # a census of other films has nothing to leave out
    census["films"]["seen_in_training"] = 0
    assert lung_gate(metadata).passed


def test_lungs_train_refuses_a_census_folder_with_no_x_rays_before_training(lung_env, capsys):
    tmp_path, figures, _ = lung_env
    figures.update(shenzhen={"dice_mean": 0.96})
    empty = tmp_path / "roots" / "empty"
    empty.mkdir()
    code = cli.main(["lungs-train", "--data", str(tmp_path / "roots" / "lungs"), "--census", str(empty),
                     "--out", str(tmp_path / "w"), "--register"])  # fmt: skip
    assert code == 2 and f"No files found in {empty}" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # refused before training, nothing written


def test_a_lung_model_trained_apart_is_registered_with_its_gate_verdict_and_promoted_by_name(tmp_path, monkeypatch, capsys):
    """The #23.1 candidates were trained without --register; the one whose crops were measured is the one
    to promote, so `models register --lungs FOLDER` judges the folder's own record, like lungs-train does."""
    monkeypatch.setenv("CXR_LUNG_MODELS_DIR", str(tmp_path / "lungs-registry"))
    census = {"probes": dict.fromkeys(LUNG_PROBES, "refused"),
              "films": {"data_name": "cxr", "checked": 1369, "refused": 0, "refused_by_source": {}}}  # fmt: skip

    def folder(name, shenzhen_dice):
        out = tmp_path / name
        out.mkdir()
        (out / "model.keras").write_bytes(f"lung weights {name}".encode())
        (out / "metadata.json").write_text(json.dumps({"held_out": {"shenzhen": {"dice_mean": shenzhen_dice}},
                                                       "census": census, "input_side": 96}))  # fmt: skip
        return str(out)

    assert cli.main(["models", "register", folder("weak", 0.62), "--lungs"]) == 0
    weak = json.loads(capsys.readouterr().out)
    assert not weak["gate"]["passed"] and "below the floor" in weak["gate"]["reasons"][0]
    assert cli.main(["models", "--lungs", "promote", weak["version"]]) == 2
    assert "cannot be promoted" in capsys.readouterr().err

    assert cli.main(["models", "--lungs", "register", folder("student", 0.956)]) == 0
    student = json.loads(capsys.readouterr().out)
    assert student["gate"] == {"passed": True, "reasons": []}
    assert cli.main(["models", "promote", student["version"], "--lungs"]) == 0
    lungs = Registry(tmp_path / "lungs-registry", kind="lungs")
    assert lungs.current_version() == student["version"] and lungs.verdict(student["version"])["passed"]
    capsys.readouterr()
    assert cli.main(["models", "list", "--lungs"]) == 0
    listed = capsys.readouterr().out
    assert f"* {student['version']}  96 px  Dice shenzhen 0.956  refused 0 of 1369" in listed
    assert Registry(tmp_path / "models").current_version() is None  # the classifiers' registry untouched
    assert cli.main(["models", "card", "--lungs"]) == 2 and "for classifiers" in capsys.readouterr().err
