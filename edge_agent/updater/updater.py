"""The updater: takes signed model releases from the fleet topic and installs them safely.

    fleet topic ──offer()──► newest announcement ──► updater thread, per configured model:
        verify (signatures, expiry, class, version...) ─► download to staging (Range, capped)
        ─► sha256 ─► version folder (one rename) ─► load + smoke test ─► ``current`` (unconfirmed)
        ─► state ─► swap in the registry ─► health window ─► ``current`` confirmed
                                                         └─► roll back to the previous version

Announcements are whole snapshots, so only the newest waits; the paho thread only hands it
over. One install runs at a time. Every refusal and every outcome is reported on the retained
status (``detail.updates``) and in the metrics. The layout on disk, and why each crash point is
safe, is in :mod:`edge_agent.updater.store`.

``HYBRID_UPDATE_TEST_KILL_AT=<step>`` makes the process SIGKILL itself at that step; the crash
tests use it to stop the agent at exact points. Steps: ``download_<k>`` (after chunk k),
``downloaded``, ``placed``, ``smoke_tested``, ``pointer_tmp``, ``pointer``, ``state_tmp``,
``state``, ``swapped``, ``watching``, ``confirm_tmp``, ``confirm``, ``rollback_pointer_tmp``,
``rollback_pointer``, ``rollback_state``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
import signal
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from protocols import (
    RELEASE_FILENAME,
    ModelAnnouncement,
    SignedRelease,
    canonical_json,
    fleet_models_topic,
)
from protocols.announcement import ANNOUNCEMENT_MAX_BYTES

from ..config import ModelConfig, UpdatesConfig
from ..errors import AgentError, ModelLoadError
from ..loader import ModelLoader
from ..metrics import UNKNOWN_MODEL, AgentMetrics
from ..models import LoadedModel
from ..registry import ModelRegistry
from .download import DownloadError, download
from .health import HealthWatch, run_smoke_test
from .store import MODEL_FILENAME, ModelStore, Pointer, Recovered, fsync_dir, write_atomic
from .verify import Reason, RejectedError, TrustedKeys, check_release

__all__ = ["KILL_ENV", "Updater", "baseline_version", "recover_models"]

logger = logging.getLogger(__name__)

KILL_ENV = "HYBRID_UPDATE_TEST_KILL_AT"
REJECTIONS_KEPT = 1024


def baseline_version(config: ModelConfig) -> int:
    """The version the config's own file counts as: its ``version`` when numeric, else 0."""
    return int(config.version) if config.version.isdigit() else 0


def recover_models(data_dir: Path, configs: Sequence[ModelConfig]) -> dict[str, Recovered]:
    """For each configured model, what to serve after a start (see ``ModelStore.recover``)."""
    return {
        config.name: ModelStore(data_dir, config.name).recover(
            config, baseline=baseline_version(config)
        )
        for config in configs
    }


@dataclass(frozen=True, kw_only=True, slots=True)
class _Serving:
    version: str | None
    release: SignedRelease | None


class Updater:
    def __init__(
        self,
        config: UpdatesConfig,
        *,
        device_class: str,
        data_dir: Path,
        base_configs: Sequence[ModelConfig],
        recovered: Mapping[str, Recovered],
        registry: ModelRegistry,
        loader: Callable[[], ModelLoader | None],
        metrics: AgentMetrics,
        on_change: Callable[[], None],
        keys_base_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.device_class = device_class
        self.topic = fleet_models_topic(device_class)
        self._keys = TrustedKeys.load(config.trusted_keys, base_dir=keys_base_dir)
        self._base = {c.name: c for c in base_configs}
        self._stores = {c.name: ModelStore(data_dir, c.name) for c in base_configs}
        self._serving = {
            name: _Serving(version=r.version, release=r.release) for name, r in recovered.items()
        }
        self._unconfirmed = [name for name, r in recovered.items() if r.unconfirmed]
        self._registry = registry
        self._loader = loader
        self._metrics = metrics
        self._on_change = on_change
        self._headers = (
            {"Authorization": f"Bearer {config.api_key.get_secret_value()}"}
            if config.api_key is not None
            else {}
        )
        self._kill_at = os.environ.get(KILL_ENV) or None
        self._cond = threading.Condition()
        self._offered: bytes | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported: set[str] = set()
        self._lock = threading.Lock()
        self._report: dict[str, dict[str, Any]] = {
            name: {
                "state": "unconfirmed"
                if r.unconfirmed
                else ("installed" if r.version is not None else "idle"),
                "version": r.version or self._base[name].version,
                **({"problems": list(r.problems)} if r.problems else {}),
            }
            for name, r in recovered.items()
        }
        for name, serving in self._serving.items():
            version = serving.version or self._base[name].version
            metrics.model_version.labels(model=name).set(int(version) if version.isdigit() else 0)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-updater", daemon=True)
        self._thread.start()
        logger.info(
            "updater: %d trusted key(s), threshold %d, watching %s",
            len(self._keys.keys),
            self.config.threshold,
            self.topic,
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def offer(self, payload: bytes) -> None:
        """An announcement arrived (paho's thread): keep only the newest, wake the worker."""
        with self._cond:
            self._offered = payload
            self._cond.notify_all()

    def detail(self) -> dict[str, Any]:
        with self._lock:
            return {name: dict(entry) for name, entry in self._report.items()}

    # -- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        for name in self._unconfirmed:
            self._rewatch(name)
        retry_at: float | None = None
        last: bytes | None = None
        while not self._stop.is_set():
            with self._cond:
                while self._offered is None and not self._stop.is_set():
                    timeout = None if retry_at is None else max(0.0, retry_at - time.monotonic())
                    if timeout == 0.0:
                        break
                    self._cond.wait(timeout)
                payload, self._offered = self._offered, None
            if self._stop.is_set():
                return
            if payload is None:  # a retry of the last announcement
                payload, retry_at = last, None
                if payload is None:
                    continue
            last = payload
            try:
                retry = self._process(payload)
            except Exception:
                logger.exception("updater: an announcement could not be processed")
                retry = True
            retry_at = time.monotonic() + self.config.retry_s if retry else None

    def _process(self, payload: bytes) -> bool:
        """Handle one announcement; ``True`` when something should be tried again later."""
        if len(payload) > ANNOUNCEMENT_MAX_BYTES:
            self._reject(
                UNKNOWN_MODEL, None, RejectedError(Reason.MALFORMED, "announcement over 4 MiB")
            )
            return False
        try:
            announcement = ModelAnnouncement.model_validate_json(payload)
        except ValueError as exc:
            self._reject(
                UNKNOWN_MODEL,
                hashlib.sha256(payload).hexdigest(),
                RejectedError(Reason.MALFORMED, f"not an announcement: {_first_line(exc)}"),
            )
            return False
        by_model: dict[str, list[dict[str, Any]]] = {}
        for raw in announcement.releases:
            name = _peek_name(raw)
            if name in self._base:
                by_model.setdefault(name, []).append(raw)
        retry = False
        for name, raws in by_model.items():
            if self._stop.is_set():
                break
            retry |= self._consider(name, raws)
        return retry

    def _consider(self, name: str, raws: list[dict[str, Any]]) -> bool:
        store = self._stores[name]
        state = store.state()
        serving = self._serving[name]
        highest = max(state.highest_installed, baseline_version(self._base[name]))
        accepted: list[SignedRelease] = []
        for raw in raws:
            key = hashlib.sha256(canonical_json(raw)).hexdigest()
            try:
                release = check_release(
                    raw,
                    keys=self._keys,
                    threshold=self.config.threshold,
                    device_class=self.device_class,
                    highest_installed=highest,
                    failed=state.failed,
                    max_size_bytes=self.config.max_size_bytes,
                )
            except RejectedError as exc:
                if exc.reason is Reason.ROLLBACK and _same_as_serving(raw, serving, highest):
                    continue  # the release serving now, announced again
                self._reject(name, key, exc)
                continue
            accepted.append(release)
        if not accepted:
            return False
        release = max(accepted, key=lambda r: int(r.manifest.version))
        key = hashlib.sha256(canonical_json(release.model_dump(mode="json"))).hexdigest()
        try:
            self._install(name, release)
        except RejectedError as exc:
            self._reject(name, key, exc)
            self._set(name, state="idle")
        except DownloadError as exc:
            logger.warning(
                "model %s: download of version %s failed: %s", name, release.manifest.version, exc
            )
            self._set(name, state="download_failed", error=str(exc))
            return True
        except AgentError as exc:
            logger.error("model %s: update to %s failed: %s", name, release.manifest.version, exc)
            self._set(name, state="failed", error=str(exc))
        finally:
            self._metrics.update_in_progress.labels(model=name).set(0)
        return False

    # -- install -----------------------------------------------------------------------------

    def _install(self, name: str, release: SignedRelease) -> None:
        manifest = release.manifest
        version = manifest.version
        store = self._stores[name]
        self._metrics.update_in_progress.labels(model=name).set(1)
        self._set(name, state="downloading", target=version)
        logger.info(
            "model %s: installing version %s (%d bytes)", name, version, manifest.size_bytes
        )
        target = store.version_dir(version)
        if target.exists():
            found, problem = store.check_version(version)
            if found is None or found.manifest != manifest:
                logger.info(
                    "model %s: discarding an earlier copy of %s (%s)", name, version, problem
                )
                shutil.rmtree(target)
        if not target.exists():
            self._fetch(store, release)
        loader = self._loader()
        if loader is None:
            raise AgentError("no TFLite runtime to load the new version with")
        self._set(name, state="smoke_testing", target=version)
        config = self._base[name].model_copy(
            update={
                "path": target / MODEL_FILENAME,
                "version": version,
                "threads": manifest.threads,
            }
        )
        try:
            model = loader.load(config)
        except ModelLoadError as exc:
            self._fail_version(store, version)
            raise RejectedError(
                Reason.SMOKE_TEST, f"version {version} does not load: {exc}"
            ) from exc
        try:
            run_smoke_test(model, manifest.smoke_test)
        except RejectedError:
            model.close()
            self._fail_version(store, version)
            raise
        self._step("smoke_tested")
        previous = self._serving[name].version
        store.write_pointer(
            Pointer(version=version, previous=previous, confirmed=False),
            step=self._step,
            label="pointer",
        )
        state = store.state()
        store.write_state(
            replace(state, highest_installed=max(state.highest_installed, int(version))),
            step=self._step,
            label="state",
        )
        self._swap(name, model, _Serving(version=version, release=release))
        self._step("swapped")
        self._metrics.updates.labels(model=name, outcome="installed").inc()
        self._watch(name, model, release, previous)

    def _fetch(self, store: ModelStore, release: SignedRelease) -> None:
        manifest = release.manifest
        staging = store.staging_dir(manifest.version)
        store.clear_staging(keep=manifest.version)
        staged = store.read_release(staging)
        if staged is not None and staged.manifest != manifest:
            shutil.rmtree(staging)
        staging.mkdir(parents=True, exist_ok=True)
        if staged is None or staged.manifest != manifest:
            write_atomic(staging / RELEASE_FILENAME, release.to_json().encode("utf-8"))
        url = "{}/v1/artifacts/{}/{}/{}/{}".format(
            self.config.hub_url.rstrip("/"),
            manifest.name,
            manifest.version,
            urllib.parse.quote(manifest.profile, safe=""),
            urllib.parse.quote(manifest.file, safe=""),
        )
        try:
            download(
                url,
                staging / MODEL_FILENAME,
                size_bytes=manifest.size_bytes,
                sha256=manifest.sha256,
                headers=self._headers,
                chunk_bytes=self.config.download_chunk_bytes,
                timeout_s=self.config.download_timeout_s,
                stop=self._stop,
                step=self._step,
            )
        except RejectedError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(staging)
        os.rename(staging, store.version_dir(manifest.version))
        fsync_dir(store.root)
        self._step("placed")

    def _fail_version(self, store: ModelStore, version: str) -> None:
        state = store.state()
        store.write_state(replace(state, failed=(*state.failed, int(version))))
        shutil.rmtree(store.version_dir(version), ignore_errors=True)

    # -- swap, watch, roll back --------------------------------------------------------------

    def _swap(self, name: str, model: LoadedModel, serving: _Serving) -> None:
        old = self._registry.replace(model)
        self._serving[name] = serving
        version = serving.version or self._base[name].version
        self._metrics.model_version.labels(model=name).set(int(version) if version.isdigit() else 0)
        self._metrics.model_ready.labels(model=name).set(1)
        if old is not None and old is not model:
            threading.Thread(target=old.retire, name=f"retire-{name}", daemon=True).start()

    def _watch(
        self, name: str, model: LoadedModel, release: SignedRelease, previous: str | None
    ) -> None:
        version = release.manifest.version
        window_s = self.config.health_window_s
        budget_ms = release.signed.latency_budget_ms or self.config.latency_budget_ms
        watch = HealthWatch(latency_budget_s=None if budget_ms is None else budget_ms / 1000)
        self._set(name, state="watching", version=version, previous=previous, target=None)
        model.watch = watch
        self._step("watching")
        deadline = time.monotonic() + window_s
        reason: str | None = None
        try:
            while time.monotonic() < deadline and not self._stop.is_set():
                try:
                    run_smoke_test(model, release.manifest.smoke_test)
                except RejectedError as exc:
                    reason = exc.message
                verdict = watch.verdict()
                if reason is None and not verdict.healthy:
                    reason = verdict.reason
                if reason is not None:
                    break
                self._stop.wait(
                    min(self.config.health_interval_s, max(0.0, deadline - time.monotonic()))
                )
            if reason is None:
                verdict = watch.verdict()
                reason = None if verdict.healthy else verdict.reason
        finally:
            model.watch = None
        if reason is not None:
            self._rollback(name, version, previous, reason)
            return
        if self._stop.is_set():
            return  # unconfirmed: watched again at the next start
        store = self._stores[name]
        store.write_pointer(
            Pointer(version=version, previous=previous, confirmed=True),
            step=self._step,
            label="confirm",
        )
        store.prune(keep={v for v in (version, previous) if v is not None})
        self._metrics.updates.labels(model=name, outcome="confirmed").inc()
        self._set(name, state="installed", version=version, previous=previous)
        logger.info("model %s: version %s is healthy and confirmed", name, version)

    def _rewatch(self, name: str) -> None:
        """A version still in its window when the agent stopped: watch it again."""
        serving = self._serving[name]
        pointer = self._stores[name].pointer()
        try:
            model = self._registry.get(name)
        except AgentError as exc:
            if serving.version is not None:
                self._rollback(name, serving.version, pointer.previous, f"does not serve: {exc}")
            return
        if serving.release is None or serving.version is None:
            return
        self._watch(name, model, serving.release, pointer.previous)

    def _rollback(self, name: str, version: str, previous: str | None, reason: str) -> None:
        logger.error("model %s: version %s is unhealthy (%s); rolling back", name, version, reason)
        store = self._stores[name]
        candidates: list[str | None] = [previous] if previous is not None else []
        candidates.append(None)
        loader = self._loader()
        restored: tuple[LoadedModel, _Serving] | None = None
        for candidate in candidates:
            if loader is None:
                break
            release = None
            config = self._base[name]
            if candidate is not None:
                release, problem = store.check_version(candidate)
                if release is None:
                    logger.error("model %s: cannot roll back to %s: %s", name, candidate, problem)
                    continue
                config = config.model_copy(
                    update={
                        "path": store.version_dir(candidate) / MODEL_FILENAME,
                        "version": candidate,
                    }
                )
            try:
                # What served before comes back without a probe: service returns sooner.
                model = loader.load(config, probe=False)
            except ModelLoadError as exc:
                logger.error("model %s: cannot roll back to %s: %s", name, candidate, exc)
                continue
            restored = (model, _Serving(version=candidate, release=release))
            break
        if restored is None:
            logger.critical(
                "model %s: nothing to roll back to; version %s keeps serving", name, version
            )
            self._set(name, state="unhealthy", version=version, error=reason)
            return
        model, serving = restored
        store.write_pointer(
            Pointer(version=serving.version, previous=None, confirmed=True),
            step=self._step,
            label="rollback_pointer",
        )
        state = store.state()
        store.write_state(replace(state, failed=(*state.failed, int(version))))
        self._step("rollback_state")
        self._swap(name, model, serving)
        self._metrics.updates.labels(model=name, outcome="rolled_back").inc()
        self._set(
            name,
            state="rolled_back",
            version=serving.version or self._base[name].version,
            previous=None,
            rolled_back={"version": version, "reason": reason, "at_s": time.time()},
        )

    # -- reporting ---------------------------------------------------------------------------

    def _reject(self, name: str, key: str | None, exc: RejectedError) -> None:
        if key is not None:
            if key in self._reported:
                return
            if len(self._reported) >= REJECTIONS_KEPT:
                self._reported.clear()
            self._reported.add(key)
        label = name if name in self._base else UNKNOWN_MODEL
        self._metrics.update_rejections.labels(model=label, reason=exc.reason.value).inc()
        logger.warning("model %s: release rejected (%s): %s", name, exc.reason.value, exc.message)
        entry = {"reason": exc.reason.value, "message": exc.message, "at_s": time.time()}
        if label == UNKNOWN_MODEL:
            with self._lock:
                self._report.setdefault(UNKNOWN_MODEL, {})["last_rejection"] = entry
            self._changed()
            return
        self._set(name, last_rejection=entry)

    def _set(self, name: str, **fields: Any) -> None:
        with self._lock:
            entry = self._report.setdefault(name, {})
            for key, value in fields.items():
                if value is None:
                    entry.pop(key, None)
                else:
                    entry[key] = value
            entry["updated_at"] = dt.datetime.now(dt.timezone.utc).isoformat()
        self._changed()

    def _changed(self) -> None:
        try:
            self._on_change()
        except Exception:
            logger.exception("updater: reporting the new state failed")

    def _step(self, name: str) -> None:
        if self._kill_at is not None and name == self._kill_at:
            logger.warning("updater: %s=%s reached; killing this process", KILL_ENV, name)
            os.kill(os.getpid(), signal.SIGKILL)


def _peek_name(raw: Any) -> str | None:
    """The model a release names, read before it is verified: only to route it."""
    try:
        name = raw["signed"]["manifest"]["name"]
    except (KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


def _same_as_serving(raw: Mapping[str, Any], serving: _Serving, highest: int) -> bool:
    try:
        manifest = raw["signed"]["manifest"]
        version = int(manifest["version"])
    except (KeyError, TypeError, ValueError):
        return False
    if version != highest:
        return False
    if serving.release is None:
        return True
    return bool(manifest.get("sha256") == serving.release.manifest.sha256)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
