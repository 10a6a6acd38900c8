"""The on-disk layout of updated models, written so that a crash at any point leaves a model
that serves: the old one or the new one, never a half-written one.

    <data_dir>/models/<name>/
        current                 {"version": "3" | null, "previous": "2" | null, "confirmed": bool}
        state.json              {"highest_installed": 3, "failed": [4]}
        3/model.tflite          one folder per installed version, with its signed release
        3/release.json
        .staging/4/             a download in progress: release.json, model.tflite.part

``current`` is the only thing that says what serves; ``null`` means the file the config names
(the version the device shipped with). It and ``state.json`` are replaced whole: written to a
temporary file, fsynced, renamed over the old one, and the folder fsynced. A version folder
appears by one rename from ``.staging`` only after its file was checked, so a folder that
``current`` names is complete; at start the agent still checks its sha256 against the signed
release and falls back to ``previous``, then to the config's file, if it does not match.
``confirmed`` is false while the new version is in its health window; an agent that starts with
an unconfirmed version watches it again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from protocols import RELEASE_FILENAME, SignedRelease, artifact_file

from ..config import ModelConfig
from .verify import file_sha256

__all__ = ["MODEL_FILENAME", "ModelStore", "Pointer", "Recovered", "UpdateState"]

logger = logging.getLogger(__name__)

MODEL_FILENAME = artifact_file("tflite")
"""``model.tflite``: the name every process gives a TFLite artifact."""
PART_SUFFIX = ".part"
STAGING = ".staging"
POINTER = "current"
STATE = "state.json"

Step = Callable[[str], None]
"""Called at each named step (the crash-test hook); does nothing in production."""


def _no_step(_name: str) -> None:
    return None


@dataclass(frozen=True, kw_only=True, slots=True)
class Pointer:
    version: str | None = None
    """The serving version; ``None``: the config's file."""
    previous: str | None = None
    confirmed: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class UpdateState:
    highest_installed: int = 0
    failed: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Recovered:
    """What to serve after a start: the config pointing at the right file, and its release."""

    config: ModelConfig
    version: str | None
    """``None``: the config's own file."""
    release: SignedRelease | None
    unconfirmed: bool
    problems: tuple[str, ...] = field(default=())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, step: Step = _no_step, label: str = "") -> None:
    """Temp file, fsync, rename over ``path``, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    if label:
        step(f"{label}_tmp")
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if label:
        step(label)


class ModelStore:
    """One model's folder under ``<data_dir>/models``."""

    def __init__(self, data_dir: Path, name: str) -> None:
        self.root = data_dir / "models" / name
        self.name = name

    def version_dir(self, version: str) -> Path:
        return self.root / version

    def staging_dir(self, version: str) -> Path:
        return self.root / STAGING / version

    # -- pointer and state -------------------------------------------------------------------

    def pointer(self) -> Pointer:
        try:
            data = json.loads((self.root / POINTER).read_text(encoding="utf-8"))
            return Pointer(
                version=_opt_version(data.get("version")),
                previous=_opt_version(data.get("previous")),
                confirmed=bool(data.get("confirmed", True)),
            )
        except FileNotFoundError:
            return Pointer()
        except (OSError, ValueError, AttributeError) as exc:
            logger.error(
                "model %s: unreadable %s (%s); serving the config's file", self.name, POINTER, exc
            )
            return Pointer()

    def write_pointer(self, pointer: Pointer, *, step: Step = _no_step, label: str = "") -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = {
            "version": pointer.version,
            "previous": pointer.previous,
            "confirmed": pointer.confirmed,
        }
        write_atomic(self.root / POINTER, json.dumps(data).encode(), step=step, label=label)

    def state(self) -> UpdateState:
        try:
            data = json.loads((self.root / STATE).read_text(encoding="utf-8"))
            return UpdateState(
                highest_installed=int(data.get("highest_installed", 0)),
                failed=tuple(int(v) for v in data.get("failed", ())),
            )
        except FileNotFoundError:
            return UpdateState()
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            logger.error("model %s: unreadable %s (%s)", self.name, STATE, exc)
            return UpdateState()

    def write_state(self, state: UpdateState, *, step: Step = _no_step, label: str = "") -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = {"highest_installed": state.highest_installed, "failed": sorted(set(state.failed))}
        write_atomic(self.root / STATE, json.dumps(data).encode(), step=step, label=label)

    # -- versions ----------------------------------------------------------------------------

    def read_release(self, folder: Path) -> SignedRelease | None:
        try:
            return SignedRelease.model_validate_json((folder / RELEASE_FILENAME).read_bytes())
        except (OSError, ValueError):
            return None

    def check_version(self, version: str) -> tuple[SignedRelease | None, str | None]:
        """``(release, None)`` when the folder holds a file matching its signed release."""
        folder = self.version_dir(version)
        release = self.read_release(folder)
        if release is None:
            return None, f"version {version}: no readable {RELEASE_FILENAME}"
        manifest = release.manifest
        path = folder / MODEL_FILENAME
        try:
            size = path.stat().st_size
        except OSError:
            return None, f"version {version}: {MODEL_FILENAME} is missing"
        if size != manifest.size_bytes or file_sha256(path) != manifest.sha256:
            return None, f"version {version}: {MODEL_FILENAME} does not match its release"
        return release, None

    def recover(self, config: ModelConfig, *, baseline: int) -> Recovered:
        """What to serve at start, repairing ``current`` and ``state.json`` where a crash left
        them behind (see the module docstring)."""
        pointer = self.pointer()
        problems: list[str] = []
        state = self.state()
        chosen: tuple[str, SignedRelease] | None = None
        for candidate in (pointer.version, pointer.previous):
            if candidate is None:
                continue
            release, problem = self.check_version(candidate)
            if release is not None:
                chosen = (candidate, release)
                break
            problems.append(str(problem))
        if chosen is None:
            if pointer.version is not None:
                logger.error(
                    "model %s: %s; serving the config's file", self.name, "; ".join(problems)
                )
                self.write_pointer(Pointer())
            return Recovered(
                config=config,
                version=None,
                release=None,
                unconfirmed=False,
                problems=tuple(problems),
            )
        version, release = chosen
        unconfirmed = version == pointer.version and not pointer.confirmed
        if version != pointer.version:
            logger.error(
                "model %s: %s; back to version %s", self.name, "; ".join(problems), version
            )
            self.write_pointer(Pointer(version=version, previous=None, confirmed=True))
        highest = max(state.highest_installed, int(version), baseline)
        if highest != state.highest_installed:
            self.write_state(replace(state, highest_installed=highest))
        updated = config.model_copy(
            update={"path": self.version_dir(version) / MODEL_FILENAME, "version": version}
        )
        return Recovered(
            config=updated,
            version=version,
            release=release,
            unconfirmed=unconfirmed,
            problems=tuple(problems),
        )

    def prune(self, keep: set[str]) -> None:
        """Remove version folders other than ``keep`` (best effort)."""
        if not self.root.is_dir():
            return
        for child in self.root.iterdir():
            if child.is_dir() and child.name.isdigit() and child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)

    def clear_staging(self, keep: str | None = None) -> None:
        staging = self.root / STAGING
        if not staging.is_dir():
            return
        for child in staging.iterdir():
            if child.name != keep:
                shutil.rmtree(child, ignore_errors=True)


def _opt_version(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    if not text.isdigit():
        raise ValueError(f"version {text!r} is not an integer")
    return text
