"""The model registry: immutable version folders plus one atomically replaced pointer.

A clinic must never be served a half-copied model or be left with no model because a retrain
crashed. So every version is copied into a hidden temp folder and renamed into place in one step,
``current.json`` is only ever replaced whole (temp file, fsync, ``os.replace``), every change happens
under an exclusive ``flock`` so two retrain jobs cannot interleave, and the served model is checked
against the sha256 recorded at registration, falling back to the previous good version when the file
on disk has been damaged.

Layout::

    models/
      current.json          {"version": ..., "history": [oldest, ..., previous], "updated": ...}
      .lock                 flock target
      <version>/            model.keras, metadata.json, metrics.json, plots/, predictions.csv, ...
      verdicts/<version>.json   the quality gate's verdict on that version's weights (sha256, policy)

Promotion is by weights, not by name: :meth:`Registry.promote` accepts a version only with a recorded
verdict that passed for exactly its model file's sha256, under the gate policy in force now, against
the model in use now (the same rule for the dashboard, the CLI, the DAG and the lung model). The one
way around it is an explicit ``override_reason``, written to the audit trail.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

from cxr_core import settings
from cxr_core.errors import ModelError
from cxr_core.fsutil import exclusive_lock, fsync_directory, write_json_atomic
from cxr_core.registry import audit

MODEL_FILE = settings.Layout.MODEL
METADATA_FILE = settings.Layout.METADATA
METRICS_FILE = settings.Layout.METRICS
POINTER_FILE = settings.Layout.POINTER
LOCK_FILE = settings.Layout.LOCK
HISTORY_LIMIT = 50
LOCK_TIMEOUT_S = 120.0


_VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
_RESERVED = {"current", "candidates", "lungs", "sites", "verdicts"}
VERDICTS_DIR = "verdicts"
KINDS = ("classifier", "lungs")  # sub-registries and site profiles live beside


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Streaming sha256, so checking a model never loads it twice into memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fsync_tree(root: Path) -> None:
    """Flush a freshly copied version to disk before it becomes visible under its final name."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(Path(dirpath))


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


class Registry:
    """The ``models/`` folder; ``root`` defaults to :func:`cxr_core.settings.models_dir`."""

    def __init__(self, root: str | os.PathLike | None = None, kind: str = "classifier"):
        if kind not in KINDS:
            raise ValueError(f"unknown registry kind {kind!r}")
        self.root = Path(root) if root is not None else settings.models_dir()
        self.kind = kind  # which gate policy its versions are judged by

    # ---------------------------------------------------------------- reading

    def _valid_name(self, version: str) -> bool:
        return bool(_VERSION_NAME.match(version)) and version.lower() not in _RESERVED

    def _exists(self, version: str) -> bool:
        return self._valid_name(version) and (self.root / version / METADATA_FILE).is_file()

    def version_dir(self, version: str) -> Path:
        """The folder of a registered version; unknown or malformed names raise rather than point nowhere."""
        if not isinstance(version, str) or not self._valid_name(version):
            raise ModelError(f"'{version}' is not a valid model version name.")
        path = self.root / version
        if not (path / METADATA_FILE).is_file():
            raise ModelError(f"There is no model version '{version}' in {self.root}.")
        return path

    def metadata(self, version: str) -> dict:
        try:
            return _read_json(self.version_dir(version) / METADATA_FILE)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"The description (metadata.json) of model version {version} is unreadable."
            ) from exc

    def metrics(self, version: str) -> dict:
        """Full evaluation metrics of a version (metrics.json, else the summary in metadata.json)."""
        path = self.version_dir(version) / METRICS_FILE
        try:
            return _read_json(path)
        except (OSError, ValueError):
            summary = self.metadata(version).get("metrics")
            return summary if isinstance(summary, dict) else {}

    def versions(self) -> list[dict]:
        """Metadata of every complete version, oldest first; temp folders and broken entries are left out."""
        found = []
        if not self.root.is_dir():
            return found
        for entry in self.root.iterdir():
            if not entry.is_dir() or not self._valid_name(entry.name):
                continue
            if not (entry / MODEL_FILE).is_file():
                continue
            try:
                meta = _read_json(entry / METADATA_FILE)
            except (OSError, ValueError):
                continue
            meta["version"] = entry.name
            found.append(meta)
        found.sort(key=lambda m: (str(m.get("created", "")), m["version"]))
        return found

    def _read_pointer(self) -> dict:
        path = self.root / POINTER_FILE
        try:
            data = _read_json(path)
        except FileNotFoundError:
            return {"version": None, "history": []}
        except (OSError, ValueError) as exc:
            raise ModelError(f"The current-model pointer {path} is unreadable ({exc}).") from exc
        history = data.get("history")
        data["history"] = [v for v in history if isinstance(v, str)] if isinstance(history, list) else []
        return data

    def current_version(self) -> str | None:
        return self._read_pointer().get("version")

    def pointer_stamp(self) -> str | None:
        """When the model in use last changed (promotion or rollback): a gate verdict taken before it
        no longer applies."""
        return self._read_pointer().get("updated")

    def history(self) -> list[str]:
        """Previously current versions, oldest first; the last one is where :meth:`rollback` goes."""
        return list(self._read_pointer()["history"])

    def verify(self, version: str) -> None:
        """Raise ModelError unless model.keras is present and matches the sha256 taken at registration."""
        directory = self.version_dir(version)
        model = directory / MODEL_FILE
        if not model.is_file():
            raise ModelError(f"The model file of version {version} is missing.")
        expected = self.metadata(version).get("model_sha256")
        if not expected:
            raise ModelError(
                f"Version {version} has no recorded checksum, so its model file cannot be trusted."
            )
        try:
            actual = sha256_file(model)
        except OSError as exc:
            raise ModelError(f"The model file of version {version} cannot be read ({exc}).") from exc
        if actual != expected:
            raise ModelError(f"The model file of version {version} is corrupt (checksum mismatch).")

    def resolve(self, version_or_dir: str | os.PathLike | None = None) -> Path:
        """The folder of the model to serve; see :meth:`resolve_with_warning` for the fallback rules."""
        return self.resolve_with_warning(version_or_dir)[0]

    def resolve_with_warning(
        self, version_or_dir: str | os.PathLike | None = None
    ) -> tuple[Path, str | None]:
        """Pick the model folder to load, and say so when it is not the one that was asked for.

        ``None`` means the current version; if it is missing or fails its checksum the newest earlier
        version in the history that passes is used instead, with a warning for the screen, because a
        clinic is better served by the previous validated model than by no model. A version name gives
        that (verified) version; a folder containing model.keras is used only if its metadata.json
        records the model's sha256 and the file matches it.
        """
        if version_or_dir is not None:
            text = os.fspath(version_or_dir)
            if isinstance(version_or_dir, str) and self._exists(text):
                self.verify(text)
                return self.version_dir(text), None
            path = Path(text)
            if (path / MODEL_FILE).is_file():
                self._verify_loose_dir(path)
                return path, None
            raise ModelError(f"No model version or model folder called '{text}' was found.")

        try:
            pointer = self._read_pointer()
        except ModelError as exc:  # fall back only to a version that was once in use, never merely registered
            return self._first_good(self.once_in_use(), f"{exc} ", "the last version that was in use")
        current = pointer.get("version")
        if not current:
            if self.versions():
                raise ModelError(
                    "No model has been approved for use yet: versions are registered but none was promoted. "
                    "Promote a version that passed its quality gate first."
                )
            raise ModelError(
                f"No trained model is installed (nothing in {self.root}). Train or install a model first."
            )
        try:
            self.verify(current)
            return self.version_dir(current), None
        except ModelError as exc:
            problem = f"{exc} "
        earlier = [v for v in reversed(pointer["history"]) if v != current]
        return self._first_good(earlier, problem, "the previous version")

    def once_in_use(self) -> list[str]:
        """Versions the audit trail shows were made current (promoted or rolled back to), latest first.

        When ``current.json`` is unreadable this is the only list a fallback may choose from: a version
        that was registered but never promoted (say one that failed the gate) must not reach patients.
        """
        seen: list[str] = []
        for entry in audit.read(self.root):
            version = entry.get("version")
            if (
                entry.get("action") in ("promote", "rollback")
                and entry.get("outcome") == "ok"
                and isinstance(version, str)
                and version not in seen
            ):
                seen.append(version)
        return seen

    def _first_good(self, candidates: list[str], problem: str, what: str) -> tuple[Path, str | None]:
        for version in candidates:
            try:
                self.verify(version)
            except ModelError:
                continue
            warning = (
                f"{problem.strip()} Using {what}, {version}, instead. "
                "Ask an administrator to roll back or retrain."
            )
            return self.version_dir(version), warning
        if not candidates:
            raise ModelError(
                f"{problem.strip()} No version is known to have been in use, so none is served. "
                "Ask an administrator to promote one again."
            )
        raise ModelError(f"{problem.strip()} No earlier model version passes its integrity check either.")

    @staticmethod
    def _verify_loose_dir(path: Path) -> None:
        """A folder outside the registry is served only with a recorded checksum that its model matches.

        A registry version folder and the training stage's output (``work/model``) both record one; a
        folder without it could hold any file at all, so it is refused rather than trusted as given.
        """
        try:
            expected = _read_json(path / METADATA_FILE).get("model_sha256")
        except (OSError, ValueError):
            expected = None
        if not expected:
            raise ModelError(
                f"The model folder {path} records no checksum (model_sha256 in {METADATA_FILE}), so its "
                "model file cannot be trusted. Register it with `python -m cxr_core models register` first."
            )
        if sha256_file(path / MODEL_FILE) != expected:
            raise ModelError(f"The model file in {path} is corrupt (checksum mismatch).")

    # ---------------------------------------------------------------- writing

    def lock(self, timeout: float = LOCK_TIMEOUT_S):
        """Exclusive registry lock shared by every process (dashboard, CLI, Airflow) on this machine."""
        busy = ModelError("Another process is changing the model registry; try again in a minute.")
        return exclusive_lock(self.root / LOCK_FILE, timeout, busy)

    def new_version_name(self) -> str:
        """A free version name, so a pipeline can write it into the card before registering."""
        return self._new_name(_now())

    def _new_name(self, moment: datetime) -> str:
        base = moment.strftime("v%Y%m%d-%H%M%S")
        name, n = base, 1
        while (self.root / name).exists():
            n += 1
            name = f"{base}-{n}"
        return name

    def register(self, candidate_dir: str | os.PathLike, version: str | None = None) -> str:
        """Copy a candidate folder in as a new immutable version and return its name (not yet current).

        The copy is made under ``.tmp-<uuid>``, flushed, then renamed, so readers never see a
        partial version; leftovers of a crashed registration are removed the next time.
        """
        source = Path(candidate_dir)
        if not (source / MODEL_FILE).is_file():
            raise ModelError(f"{source} has no {MODEL_FILE}; there is nothing to register.")
        try:
            meta = _read_json(source / METADATA_FILE)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{source}/{METADATA_FILE} is missing or unreadable ({exc}).") from exc
        if version is not None and not self._valid_name(version):
            raise ModelError(f"'{version}' is not a valid version name (letters, digits, '.', '_', '-').")

        with self.lock():
            self._remove_leftovers()
            tmp = self.root / f".tmp-{uuid.uuid4().hex}"
            try:
                shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(".tmp-*", LOCK_FILE))
                moment = _now()
                if version is None:
                    name = self._new_name(moment)
                elif (self.root / version).exists():
                    raise ModelError(f"A model version called '{version}' already exists.")
                else:
                    name = version
                try:
                    parent = self.current_version()
                except ModelError:
                    parent = None
                meta.update(
                    version=name,
                    model_sha256=sha256_file(tmp / MODEL_FILE),
                    registered=_iso(moment),
                    source_dir=settings.project_relative(source),
                )
                meta.setdefault("created", _iso(moment))
                meta.setdefault("parent", parent)
                with open(tmp / METADATA_FILE, "w", encoding="utf-8") as handle:
                    json.dump(meta, handle, indent=2, sort_keys=True, default=str)
                    handle.write("\n")
                _fsync_tree(tmp)
                os.rename(tmp, self.root / name)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_directory(self.root)
        return name

    def _remove_leftovers(self) -> None:
        """Temp folders only exist while the lock is held, so any seen under the lock are from a crash."""
        for entry in self.root.glob(".tmp-*"):
            shutil.rmtree(entry, ignore_errors=True)
        for entry in self.root.glob(f".{POINTER_FILE}.*.tmp"):
            with contextlib.suppress(OSError):
                entry.unlink()

    def _write_pointer(self, version: str | None, history: list[str]) -> None:
        history = [v for v in history if v and v != version][-HISTORY_LIMIT:]
        write_json_atomic(
            self.root / POINTER_FILE, {"version": version, "history": history, "updated": _iso(_now())}
        )

    def current_policy_stamp(self) -> str:
        """The fingerprint of the gate policy this registry's versions must pass now."""
        from cxr_core.registry.gate import lung_policy, policy_stamp, server_policy

        return policy_stamp(lung_policy() if self.kind == "lungs" else server_policy())

    def record_verdict(self, version: str, verdict: dict) -> dict:
        """Keep the gate's verdict on a registered version, bound to its weights' sha256.

        ``verdict`` holds at least ``passed``, ``policy`` (the policy stamp it was taken under),
        ``compared_with`` and ``registry_stamp`` (the model in use and the pointer stamp then).
        """
        sha = self.metadata(version).get("model_sha256")
        if verdict.get("model_sha256") not in (None, sha):
            raise ModelError(f"The verdict was taken on other weights than those of version {version}.")
        record = {
            "version": version,
            "kind": self.kind,
            "model_sha256": sha,
            "recorded": _iso(_now()),
            **{k: verdict.get(k) for k in ("passed", "policy", "floors", "compared_with", "registry_stamp",
                                            "reasons", "checks")},
        }  # fmt: skip
        write_json_atomic(self.root / VERDICTS_DIR / f"{version}.json", record)
        return record

    def verdict(self, version: str) -> dict | None:
        """The recorded gate verdict of a version, or None."""
        self.version_dir(version)  # a valid, registered name only
        try:
            return _read_json(self.root / VERDICTS_DIR / f"{version}.json")
        except (OSError, ValueError):
            return None

    def gate_problem(self, version: str) -> str | None:
        """Why ``version`` may not be promoted now under the gate, or None when a current pass holds.

        A pass holds only for the exact weights it judged (sha256), under the policy in force now,
        against the model in use now (a promotion or rollback since makes it stale).
        """
        from cxr_core.registry.gate import promotability

        verdict = self.verdict(version)
        if verdict is None:
            return "no quality-gate verdict was recorded for it"
        if verdict.get("model_sha256") != self.metadata(version).get("model_sha256"):
            return "its gate verdict was taken on other weights"
        pointer = self._pointer_for_update()
        decision = promotability(
            version, bool(verdict.get("passed")), verdict.get("compared_with"), pointer.get("version"),
            verdict_stamp=verdict.get("registry_stamp"), current_stamp=pointer.get("updated"),
            verdict_policy=verdict.get("policy"), current_policy=self.current_policy_stamp(),
        )  # fmt: skip
        if decision.state == "failed":
            reasons = "; ".join(verdict.get("reasons") or []) or "see its verdict"
            return f"it failed the quality gate ({reasons})"
        return None if decision.allowed or decision.state == "in_use" else decision.message

    def promote(self, version: str, actor: str | None = None, override_reason: str | None = None) -> None:
        """Make a verified version current; the one it replaces goes on the history for rollback.

        Only with a current pass of the quality gate for exactly these weights (:meth:`gate_problem`),
        unless ``override_reason`` says why an administrator promotes it anyway. Every call leaves one
        line in the audit trail, refused ones included, with the weights' sha256.
        """
        previous = None
        sha = None
        override = (override_reason or "").strip() or None
        try:
            with self.lock():
                self.verify(version)
                sha = self.metadata(version).get("model_sha256")
                pointer = self._pointer_for_update()
                previous = pointer.get("version")
                if previous == version:
                    return
                problem = self.gate_problem(version)
                if problem and not override:
                    raise ModelError(
                        f"{version} cannot be promoted: {problem}. Judge it again through the pipeline "
                        "(Retrain page, `python -m cxr_core pipeline`, the DAG), or, as an administrator, "
                        "promote it with --override-gate REASON."
                    )
                history = [v for v in pointer["history"] if v != version]
                if previous:
                    history.append(previous)
                self._write_pointer(version, history)
        except ModelError as error:
            audit.record("promote", root=self.root, version=version, previous=previous, actor=actor,
                         outcome=f"refused: {error}", model_sha256=sha, kind=self.kind)  # fmt: skip
            raise
        details = {"override_gate": override, "gate_problem": problem} if override else {}
        audit.record("promote", root=self.root, version=version, previous=previous, actor=actor,
                     model_sha256=sha, kind=self.kind, **details)  # fmt: skip

    def add_serving_twin(self, version: str, convert, actor: str | None = None) -> str:
        """Give a registered version its serving twin (``model.tflite``, checksum in its metadata).

        ``convert(version_dir) -> sha256 | None`` writes the twin (``cxr_core.modelling.runtime``: the
        registry records, it does not know networks). The weights, their sha256 and so every gate
        verdict stay as they are: the twin is the same network in another runtime, written only if it
        reproduces Keras, so what the product decides does not change. It does change what runs, so
        it leaves an audit line. Versions trained since the twin existed carry it from training.
        """
        sha = None
        try:
            with self.lock():
                self.verify(version)
                directory = self.version_dir(version)
                meta = self.metadata(version)
                sha = meta.get("model_sha256")
                twin = convert(directory)
                if twin is None:
                    raise ModelError(
                        f"{version} cannot be served by TFLite (a head layer without a numpy gradient, "
                        "or outputs that differ from Keras by more than 1e-4): Keras keeps serving it."
                    )
                meta.update(tflite_sha256=twin, tflite_model_sha256=sha)
                write_json_atomic(directory / METADATA_FILE, meta)
        except ModelError as error:
            audit.record("serving_twin", root=self.root, version=version, actor=actor,
                         outcome=f"refused: {error}", model_sha256=sha, kind=self.kind)  # fmt: skip
            raise
        audit.record("serving_twin", root=self.root, version=version, actor=actor,
                     model_sha256=sha, tflite_sha256=twin, kind=self.kind)  # fmt: skip
        return twin

    def rollback(self, actor: str | None = None) -> str:
        """Go back to the most recent earlier version that still passes its checksum, and return it."""
        current = None
        try:
            with self.lock():
                pointer = self._pointer_for_update()
                history = list(pointer["history"])
                current = pointer.get("version")
                problems = []
                while history:
                    candidate = history.pop()
                    if candidate == current:
                        continue
                    try:
                        self.verify(candidate)
                    except ModelError as exc:
                        problems.append(str(exc))
                        continue
                    self._write_pointer(candidate, history)
                    break
                else:
                    detail = f" ({'; '.join(problems)})" if problems else ""
                    raise ModelError(f"There is no earlier model version to roll back to{detail}.")
        except ModelError as error:
            audit.record(
                "rollback", root=self.root, previous=current, actor=actor, outcome=f"refused: {error}"
            )
            raise
        audit.record("rollback", root=self.root, version=candidate, previous=current, actor=actor)
        return candidate

    def _pointer_for_update(self) -> dict:
        """The pointer to modify; an unreadable one counts as empty so that promoting a version repairs it."""
        try:
            return self._read_pointer()
        except ModelError:
            return {"version": None, "history": []}
