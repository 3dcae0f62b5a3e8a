"""The model registry never shows a half-written version or pointer, and never serves a corrupt model."""

import json
import multiprocessing
import os
from pathlib import Path

import pytest
from gatekeeping import promote_for_setup

import cxr_core.registry.store as registry_module
from cxr_core.errors import ModelError
from cxr_core.registry.gate import GateResult, quality_gate
from cxr_core.registry.store import Registry


def make_candidate(parent: Path, name: str, payload: bytes = b"fake keras archive", **meta) -> Path:
    """A candidate folder as the pipeline leaves it; the registry treats model.keras as opaque bytes."""
    folder = parent / name
    (folder / "plots").mkdir(parents=True)
    (folder / "model.keras").write_bytes(payload + name.encode())
    (folder / "plots" / "roc.png").write_bytes(b"png")
    (folder / "metrics.json").write_text(json.dumps({"roc_auc": 0.95}))
    (folder / "predictions.csv").write_text("file,label,probability\n")
    (folder / "metadata.json").write_text(
        json.dumps({"threshold": 0.4, "threshold_rule": "sens>=0.95", **meta})
    )
    return folder


@pytest.fixture
def reg(tmp_path) -> Registry:
    return Registry(tmp_path / "models")


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_register_twice_gives_two_complete_versions(reg, tmp_path):
    a = reg.register(make_candidate(tmp_path, "cand_a", params={"epochs": 3}, data_fingerprint="abc"))
    b = reg.register(make_candidate(tmp_path, "cand_b"))
    assert a != b and a.startswith("v") and b.startswith("v")
    assert [m["version"] for m in reg.versions()] == [a, b]
    meta = reg.metadata(a)
    assert meta["version"] == a
    assert meta["params"] == {"epochs": 3} and meta["data_fingerprint"] == "abc"
    assert meta["threshold"] == 0.4 and meta["created"].endswith("Z")
    assert meta["model_sha256"] == registry_module.sha256_file(reg.version_dir(a) / "model.keras")
    assert (reg.version_dir(a) / "plots" / "roc.png").is_file()
    assert reg.metrics(a) == {"roc_auc": 0.95}
    # Registering does not change what is served, and leaves no temp folders behind.
    assert reg.current_version() is None
    assert not list(reg.root.glob(".tmp-*"))
    reg.verify(a)
    reg.verify(b)


def test_register_names_and_refusals(reg, tmp_path):
    assert reg.register(make_candidate(tmp_path, "c1"), version="v1") == "v1"
    with pytest.raises(ModelError, match="already exists"):
        reg.register(make_candidate(tmp_path, "c2"), version="v1")
    with pytest.raises(ModelError, match="not a valid version name"):
        reg.register(make_candidate(tmp_path, "c3"), version="../escape")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="nothing to register"):
        reg.register(empty)
    with pytest.raises(ModelError, match="no model version"):
        reg.version_dir("v999")


def test_a_crashed_registration_is_invisible_and_cleaned_up(reg, tmp_path, monkeypatch):
    first = reg.register(make_candidate(tmp_path, "good"))

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(registry_module.os, "rename", crash)
    with pytest.raises(OSError, match="disk full"):
        reg.register(make_candidate(tmp_path, "bad"))
    monkeypatch.undo()
    assert [m["version"] for m in reg.versions()] == [first]
    assert not list(reg.root.glob(".tmp-*"))
    # A leftover from a hard crash (no cleanup ran) is ignored by readers and removed by the next write.
    (reg.root / ".tmp-deadbeef").mkdir()
    (reg.root / ".tmp-deadbeef" / "model.keras").write_bytes(b"half")
    assert [m["version"] for m in reg.versions()] == [first]
    reg.register(make_candidate(tmp_path, "next"))
    assert not (reg.root / ".tmp-deadbeef").exists()


def test_promote_and_rollback_round_trip(reg, tmp_path):
    a = reg.register(make_candidate(tmp_path, "a"), version="va")
    b = reg.register(make_candidate(tmp_path, "b"), version="vb")
    c = reg.register(make_candidate(tmp_path, "c"), version="vc")
    with pytest.raises(ModelError, match="no earlier model version"):
        reg.rollback()
    promote_for_setup(reg, a)
    assert reg.current_version() == a
    promote_for_setup(reg, b)
    promote_for_setup(reg, c)
    pointer = json.loads((reg.root / "current.json").read_text())
    assert pointer["version"] == c and pointer["history"] == [a, b] and pointer["updated"]
    assert reg.resolve() == reg.version_dir(c)

    assert reg.rollback() == b
    assert reg.current_version() == b and reg.history() == [a]
    assert reg.rollback() == a
    assert reg.history() == []
    with pytest.raises(ModelError, match="no earlier model version to roll back to"):
        reg.rollback()
    promote_for_setup(reg, c)
    assert reg.history() == [a]


def test_current_json_is_never_half_written(reg, tmp_path, monkeypatch):
    a = reg.register(make_candidate(tmp_path, "a"))
    b = reg.register(make_candidate(tmp_path, "b"))
    promote_for_setup(reg, a)
    before = (reg.root / "current.json").read_bytes()

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(registry_module.os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        promote_for_setup(reg, b)
    monkeypatch.undo()
    assert (reg.root / "current.json").read_bytes() == before
    assert reg.current_version() == a
    assert reg.resolve() == reg.version_dir(a)
    assert [p.name for p in reg.root.iterdir() if p.name.endswith(".tmp")] == []


def test_verify_detects_a_flipped_byte(reg, tmp_path):
    v = reg.register(make_candidate(tmp_path, "a", payload=b"\x00" * 4096))
    reg.verify(v)
    flip_byte(reg.version_dir(v) / "model.keras")
    with pytest.raises(ModelError, match=f"model file of version {v} is corrupt \\(checksum mismatch\\)"):
        reg.verify(v)
    with pytest.raises(ModelError, match="corrupt"):
        reg.promote(v, override_reason="even an override never serves a corrupt file")
    (reg.version_dir(v) / "model.keras").unlink()
    with pytest.raises(ModelError, match="missing"):
        reg.verify(v)


def test_resolve_falls_back_to_previous_good_version(reg, tmp_path):
    a = reg.register(make_candidate(tmp_path, "a"), version="va")
    b = reg.register(make_candidate(tmp_path, "b"), version="vb")
    promote_for_setup(reg, a)
    promote_for_setup(reg, b)
    assert reg.resolve_with_warning() == (reg.version_dir(b), None)

    flip_byte(reg.version_dir(b) / "model.keras")
    path, warning = reg.resolve_with_warning()
    assert path == reg.version_dir(a)
    assert "vb" in warning and "corrupt" in warning and "va" in warning
    assert reg.resolve() == reg.version_dir(a)
    # Asking for the corrupt version by name is refused rather than silently substituted.
    with pytest.raises(ModelError, match="corrupt"):
        reg.resolve("vb")

    flip_byte(reg.version_dir(a) / "model.keras")
    with pytest.raises(ModelError, match="No earlier model version passes"):
        reg.resolve()


def test_resolve_by_name_by_folder_and_with_nothing(reg, tmp_path):
    with pytest.raises(ModelError, match="No trained model is installed"):
        reg.resolve()
    v = reg.register(make_candidate(tmp_path, "a"))
    with pytest.raises(ModelError, match="none was promoted"):
        reg.resolve()
    assert reg.resolve(v) == reg.version_dir(v)
    unrecorded = make_candidate(tmp_path, "unrecorded")  # a folder outside the registry needs a checksum
    with pytest.raises(ModelError, match="records no checksum"):
        reg.resolve(unrecorded)
    wrong = make_candidate(tmp_path, "wrong", model_sha256="0" * 64)
    with pytest.raises(ModelError, match="corrupt"):
        reg.resolve(wrong)
    loose = make_candidate(tmp_path, "loose")
    meta = json.loads((loose / "metadata.json").read_text())
    meta["model_sha256"] = registry_module.sha256_file(loose / "model.keras")
    (loose / "metadata.json").write_text(json.dumps(meta))
    assert reg.resolve(loose) == loose
    assert reg.resolve(str(loose)) == loose
    with pytest.raises(ModelError, match="No model version or model folder"):
        reg.resolve("v-does-not-exist")


def _promote_in_child(root: str, version: str, rounds: int) -> None:
    registry = Registry(root)
    for _ in range(rounds):
        promote_for_setup(registry, version)


def test_concurrent_promotes_keep_the_pointer_consistent(reg, tmp_path):
    a = reg.register(make_candidate(tmp_path, "a"), version="va")
    b = reg.register(make_candidate(tmp_path, "b"), version="vb")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_promote_in_child, args=(str(reg.root), v, 30)) for v in (a, b)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    pointer = json.loads((reg.root / "current.json").read_text())
    assert pointer["version"] in (a, b)
    assert set(pointer["history"]) <= {a, b} and pointer["version"] not in pointer["history"]


def test_lock_times_out_with_a_clear_message(reg):
    import fcntl

    reg.root.mkdir(parents=True)
    fd = os.open(reg.root / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        # flock locks are per open file description, so a second open in this process conflicts.
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ModelError, match="Another process"), reg.lock(timeout=0.2):
            pass
    finally:
        os.close(fd)


# Measured on enough films, and nothing moved by framing or a strip (evaluation's re-read, as summarised).
ROBUST = {"framing": {"films": 200, "tried": 200, "share": 0.03, "refused_share": 0.0},
          "strips_and_markers": {"films": 200, "tried": 200, "flipped_share": 0.01, "peak_on_strip_share": 0.0,
                                 "maps_with_peak": 200, "refused_share": 0.0},
          "held_out_markers": {"films": 200, "tried": 200, "flipped_share": 0.015, "refused_share": 0.0}}  # fmt: skip
ENOUGH = {"test_images": 200, "test_per_class": {"Normal": 100, "Tuberculosis": 100}, **ROBUST}
GOOD = {"roc_auc": 0.97, "operating_point": {"sensitivity": 0.93, "specificity": 0.90}, **ENOUGH}


def test_gate_passes_on_floors_when_there_is_no_current_model():
    result = quality_gate(GOOD, None, {})
    assert result.passed and result.reasons == [] and isinstance(result, GateResult)
    assert result.floors["min_sensitivity"] == 0.90  # the verdict says which floors it applied
    assert any("only the floors apply" in c for c in result.checks)


def test_gate_fails_below_the_floors_with_reasons():
    weak = {"roc_auc": 0.9, "operating_point": {"sensitivity": 0.86, "specificity": 0.65}, **ENOUGH}
    result = quality_gate(weak, None, {"min_sensitivity": 0.90, "min_specificity": 0.70})
    assert not result.passed
    assert result.reasons == [
        "sensitivity 0.86 is below the floor 0.90",
        "specificity 0.65 is below the floor 0.70",
    ]


def test_gate_compares_auc_with_the_current_model():
    current = {"roc_auc": 0.97, "operating_point": {"sensitivity": 0.95, "specificity": 0.9}}
    worse = {"roc_auc": 0.93, "operating_point": {"sensitivity": 0.95, "specificity": 0.9}, **ENOUGH}
    result = quality_gate(worse, current, None)
    assert not result.passed
    assert result.reasons == ["ROC AUC 0.93 is more than 0.02 below the current model's 0.97"]
    slightly_worse = {**worse, "roc_auc": 0.955}
    assert quality_gate(slightly_worse, current, {"max_auc_drop": 0.02}).passed
    assert not quality_gate(slightly_worse, current, {"max_auc_drop": 0.01}).passed


def test_gate_shows_enough_digits_and_fails_closed_on_missing_metrics():
    borderline = {"roc_auc": 0.97, "operating_point": {"sensitivity": 0.899, "specificity": 0.9}, **ENOUGH}
    assert quality_gate(borderline, None, None).reasons == ["sensitivity 0.899 is below the floor 0.90"]
    exactly = {"roc_auc": 0.97, "operating_point": {"sensitivity": 0.9, "specificity": 0.7}, **ENOUGH}
    assert quality_gate(exactly, None, None).passed
    missing = quality_gate({"roc_auc": 0.97, **ENOUGH}, {"roc_auc": 0.97}, None)
    assert not missing.passed
    assert missing.reasons == [
        "sensitivity of the new model was not measured",
        "specificity of the new model was not measured",
    ]
    nan = {"roc_auc": float("nan"), "operating_point": {"sensitivity": 0.95, "specificity": 0.9}, **ENOUGH}
    assert not quality_gate(nan, GOOD, None).passed


def test_too_few_test_films_can_never_pass():
    tiny = {**GOOD, "test_images": 4, "test_per_class": {"Normal": 2, "Tuberculosis": 2}}
    result = quality_gate(tiny, None, {})
    assert not result.passed
    assert result.reasons == [
        "too few test films to judge (n=4, smallest class 2; the policy needs 30 films and 10 of each class)"
    ]
    one_class = {**GOOD, "test_images": 80, "test_per_class": {"Tuberculosis": 80}}
    assert not quality_gate(one_class, None, {}).passed


def test_the_gate_holds_the_framing_and_strip_targets():
    """The figures of the morning's light-add classifier of 2026-12-05 (16 of 574 decisions changed with a
    strip: 2.8 %) fail; those of the model then in use (8 of 574: 1.4 %) pass; a map peaking on the strip, refusals once
    reframed, and a re-read that did not happen each fail on their own."""
    strips = ROBUST["strips_and_markers"]
    light_add = {**GOOD, "strips_and_markers": {**strips, "films": 574, "tried": 574, "flipped_share": 0.0279}}
    result = quality_gate(light_add, None, None)
    assert not result.passed
    assert result.reasons == ["2.79 % of 574 decisions change with a strip and a text marker on one edge "
                              "(at most 2% allowed)"]  # fmt: skip
    serving = {**GOOD, "strips_and_markers": {**strips, "films": 574, "tried": 574, "flipped_share": 0.0139}}
    assert quality_gate(serving, None, None).passed
    assert any("1.4% of 574 decisions change with a strip" in check for check in quality_gate(serving, None, None).checks)
    peaks = {**GOOD, "strips_and_markers": {**strips, "peak_on_strip_share": 0.025}}
    assert quality_gate(peaks, None, None).reasons == [
        "2.50 % of 200 evidence maps peak on the added strip (at most 2% allowed)"]
    reframed = {**GOOD, "framing": {**ROBUST["framing"], "share": 0.051, "refused_share": 0.015}}
    assert len(quality_gate(reframed, None, None).reasons) == 2
    unmeasured = {key: value for key, value in GOOD.items() if key != "framing"}
    reasons = quality_gate(unmeasured, None, None).reasons
    assert reasons == ["how often decisions change when TB films are cropped wide and normals padded with bars "
                       "was not measured", "how often films are refused once reframed was not measured"]
    blank = {**GOOD, "strips_and_markers": {**strips, "maps_with_peak": 0, "peak_on_strip_share": None}}
    assert quality_gate(blank, None, None).reasons == [  # blank maps point nowhere: not "off the strip"
        "how often evidence maps peak on the added strip was not measured"]
    partly = {**GOOD, "framing": {**ROBUST["framing"], "films": 190, "tried": 190}}  # 10 originals moved
    assert quality_gate(partly, None, None).reasons == [
        "only 190 of 200 test films could be read again and reframed: the rest were not measured (moved or "
        "changed since ingest)"]
    assert quality_gate({**GOOD, "framing": {**ROBUST["framing"], "films": 196, "tried": 196}}, None, None).passed
    unlike = {**GOOD, "held_out_markers": {**ROBUST["held_out_markers"], "flipped_share": 0.021}}
    assert quality_gate(unlike, None, None).reasons == [  # markers unlike the training's count too
        "2.10 % of 200 decisions change with a strip and a marker in a word and font training never drew "
        "(at most 2% allowed)"]
    few = {**GOOD, "test_images": 12, "strips_and_markers": {**strips, "films": 12, "tried": 12, "maps_with_peak": 12},
           "framing": {**ROBUST["framing"], "films": 12, "tried": 12}}  # fmt: skip
    few["held_out_markers"] = {**ROBUST["held_out_markers"], "films": 12, "tried": 12}
    assert len(quality_gate(few, None, None).reasons) == 7  # too few films; a share of 12 says nothing
    assert "measured on 12 test films, fewer than the 30" in quality_gate(few, None, None).reasons[1]


def test_a_policy_value_that_is_not_a_number_stops_the_gate_instead_of_switching_a_floor_off():
    from cxr_core.registry.gate import server_policy

    for key in ("max_strip_flip_share", "min_sensitivity"):
        with pytest.raises(ValueError, match=key):
            server_policy({key: float("nan")})


def test_no_params_file_or_form_loosens_the_robustness_targets():
    from cxr_core.registry.gate import ROBUSTNESS_CHECKS, effective_floors, server_policy
    from cxr_core.settings import defaults

    # every check the gate makes is a key of the params' gate section, shipped at its ceiling
    assert {key: ceiling for key, ceiling, *_ in ROBUSTNESS_CHECKS} == {
        key: value for key, value in defaults("gate").items() if key in {row[0] for row in ROBUSTNESS_CHECKS}}
    assert len(ROBUSTNESS_CHECKS) == 6

    policy = server_policy({"max_strip_flip_share": 0.5, "max_framing_flip_share": 0.01})
    assert policy["max_strip_flip_share"] == 0.02  # the product's ceiling, whatever the file says
    assert policy["max_framing_flip_share"] == 0.01  # a deployment may make it stricter
    floors, notes = effective_floors(policy, {"max_strip_peak_share": 0.3, "max_strip_flip_share": 0.01})
    assert floors["max_strip_peak_share"] == 0.02 and floors["max_strip_flip_share"] == 0.01
    assert notes == ["max_strip_peak_share 0.3 is looser than the policy's 0.02; the policy applies"]
    striped = {**GOOD, "strips_and_markers": {**ROBUST["strips_and_markers"], "flipped_share": 0.015}}
    assert quality_gate(striped, None, {"max_strip_flip_share": 0.5}).passed
    assert not quality_gate(striped, None, {"max_strip_flip_share": 0.01}).passed


def test_a_form_can_raise_the_floors_but_never_lower_them():
    from cxr_core.registry.gate import effective_floors

    policy = {"min_sensitivity": 0.9, "min_specificity": 0.7, "max_auc_drop": 0.02}
    floors, notes = effective_floors(
        policy, {"min_sensitivity": 0.0, "min_specificity": 0.8, "max_auc_drop": 1}
    )
    assert (
        floors["min_sensitivity"] == 0.9
        and floors["min_specificity"] == 0.8
        and floors["max_auc_drop"] == 0.02
    )
    assert len(notes) == 2 and all("policy applies" in note for note in notes)
    assert effective_floors(policy, None)[1] == []


def test_a_verdict_no_longer_applies_after_a_rollback_or_a_new_policy(tmp_path):
    from cxr_core.registry.gate import policy_stamp, promotability

    reg = Registry(tmp_path / "models")
    a = reg.register(make_candidate(tmp_path, "a"))
    b = reg.register(make_candidate(tmp_path, "b"))
    promote_for_setup(reg, a)
    policy = policy_stamp({"min_sensitivity": 0.9})
    verdict = {"verdict_stamp": reg.pointer_stamp(), "verdict_policy": policy}

    def now(policy_now=policy):
        return promotability(b, True, a, reg.current_version(), current_stamp=reg.pointer_stamp(),
                             current_policy=policy_now, **verdict)  # fmt: skip

    assert now().allowed
    assert not now(policy_stamp({"min_sensitivity": 0.95})).allowed  # the server's floors changed
    promote_for_setup(reg, b)
    assert now().state == "in_use"
    import time

    time.sleep(1.1)  # the pointer's stamp has a resolution of one second
    reg.rollback()  # back to a: the same model as when judged, but an admin undid b on purpose
    assert reg.current_version() == a and not now().allowed and now().state == "stale"


# ------------------------------------------------------------------ one gate policy for every path


def passing_verdict(reg: Registry, **changes) -> dict:
    return {"passed": True, "reasons": [], "policy": reg.current_policy_stamp(),
            "compared_with": reg.current_version(), "registry_stamp": reg.pointer_stamp(), **changes}  # fmt: skip


def test_promote_needs_a_current_pass_for_exactly_those_weights(reg, tmp_path):
    a = reg.register(make_candidate(tmp_path, "a"), version="va")
    with pytest.raises(ModelError, match="no quality-gate verdict"):
        reg.promote(a, actor="cli:root")  # promotion by name alone: refused
    reg.record_verdict(a, {**passing_verdict(reg), "passed": False, "reasons": ["sensitivity 0.50 is below"]})
    with pytest.raises(ModelError, match="failed the quality gate .sensitivity 0.50"):
        reg.promote(a)
    reg.record_verdict(a, passing_verdict(reg, policy="a-policy-no-longer-in-force"))
    with pytest.raises(ModelError, match="floors have changed"):
        reg.promote(a)
    reg.record_verdict(a, passing_verdict(reg))
    reg.promote(a, actor="cli:root")
    assert reg.current_version() == a

    b = reg.register(make_candidate(tmp_path, "b"), version="vb")
    with pytest.raises(ModelError, match="other weights"):  # a verdict on a's weights does not fit b
        reg.record_verdict(b, {**passing_verdict(reg), "model_sha256": reg.metadata(a)["model_sha256"]})
    verdict_file = reg.root / "verdicts" / "vb.json"
    verdict_file.parent.mkdir(exist_ok=True)
    verdict_file.write_text(json.dumps({**passing_verdict(reg), "model_sha256": reg.metadata(a)["model_sha256"]}))
    with pytest.raises(ModelError, match="taken on other weights"):  # a verdict file copied across versions
        reg.promote(b)
    reg.record_verdict(b, {**passing_verdict(reg), "compared_with": None})  # judged before a was in use
    with pytest.raises(ModelError, match="model in use has changed"):
        reg.promote(b)
    assert reg.current_version() == a

    reg.promote(b, actor="cli:root", override_reason="clinical lead accepts the risk, ticket 42")
    assert reg.current_version() == b
    entries = [e for e in audit_entries(reg) if e["action"] == "promote"]
    assert [e["outcome"].split(":")[0] for e in entries] == ["refused"] * 3 + ["ok"] + ["refused"] * 2 + ["ok"]
    last = entries[-1]
    assert last["override_gate"] == "clinical lead accepts the risk, ticket 42"
    assert "model in use has changed" in last["gate_problem"]
    assert last["model_sha256"] == reg.metadata(b)["model_sha256"]


def audit_entries(reg: Registry) -> list[dict]:
    from cxr_core.registry import audit

    return list(reversed(audit.read(reg.root)))


def test_a_broken_pointer_never_serves_a_version_that_was_not_in_use(reg, tmp_path):
    a = reg.register(make_candidate(tmp_path, "a"), version="v1-in-use")
    reg.record_verdict(a, passing_verdict(reg))
    reg.promote(a)
    failed = reg.register(make_candidate(tmp_path, "b"), version="v2-failed-gate")  # newer, never promoted
    reg.record_verdict(failed, {**passing_verdict(reg), "passed": False, "reasons": ["too weak"]})
    (reg.root / "current.json").write_text("{ this is not json")
    path, warning = reg.resolve_with_warning()
    assert path == reg.version_dir(a) and "v1-in-use" in warning and "unreadable" in warning

    fresh = Registry(tmp_path / "fresh")  # versions registered, none ever in use, and a broken pointer
    fresh.register(make_candidate(tmp_path, "c"), version="v2-failed-gate")
    (fresh.root / "current.json").write_text("{ broken")
    with pytest.raises(ModelError, match="No version is known to have been in use"):
        fresh.resolve()


def test_the_who_floors_cannot_be_lowered_by_a_params_file_or_a_flag(tmp_path, monkeypatch):
    import yaml

    from cxr_core.registry.gate import effective_floors, server_policy
    from cxr_core.settings import load_params

    params = load_params()
    params["gate"].update(min_sensitivity=0.0, min_specificity=0.0)
    path = tmp_path / "server-params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("CXR_PARAMS_FILE", str(path))
    policy = server_policy()
    assert policy["min_sensitivity"] == 0.90 and policy["min_specificity"] == 0.70
    floors, _ = effective_floors({"min_sensitivity": 0.0}, {"min_sensitivity": 0.0, "min_specificity": 0.1})
    assert floors["min_sensitivity"] == 0.90 and floors["min_specificity"] == 0.70
    weak = {"roc_auc": 0.9, "operating_point": {"sensitivity": 0.5, "specificity": 0.5}, **ENOUGH}
    assert not quality_gate(weak, None, {"min_sensitivity": 0.0, "min_specificity": 0.0}).passed
    stricter = server_policy({"min_sensitivity": 0.95})
    assert stricter["min_sensitivity"] == 0.95  # a deployment may raise them
