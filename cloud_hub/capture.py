"""Capture: the requests devices hand over, kept with the cloud's answers as dataset shards.

Off unless a model's ``config.yaml`` has a ``capture:`` section (:class:`CaptureConfig`). A
request is a fallback when it carries the ``fallback_reason`` parameter (docs/protocol.md,
section 2.5); the agent adds it, and what its own model answered, to every request it hands
over. Requests with ``"capture": false`` (a device that opted out) are never kept, nor are
requests that are not fallbacks.

    InferenceService.run ──► Capture.inspect (parameters checked before the model runs)
                         ──► Capture.record (sampled, buffered per model)
                                  │ shard_records reached, flush_interval_s passed, flush()
                                  ▼
                             ShardStore.write_shard ──► <capture_store>/<model>/<shard>.npz

Each shard is one ``.npz`` file (numpy, no pickles: ``numpy.load`` reads it), one row per
record (per batch entry for a batching model):

    input.<name>, output.<name>   the request's inputs and the cloud's outputs
    device_top_class (int64, -1 unknown), device_confidence (float32, NaN unknown)
    fallback_reason, device_id, device_class, device_model_version, request_id,
    model_version (strings), time_s (float64, Unix time)

The store sits behind :class:`ShardStore` (write, list, read, delete), so it can move to shared
storage; :class:`FileShardStore` keeps shards on a filesystem. The size bound (``max_bytes``,
oldest first) and the retention (``retention_s``) are enforced after every write and once a
minute.
"""

from __future__ import annotations

import io
import logging
import math
import os
import random
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from prometheus_client import Counter, Gauge

from protocols import DecodedRequest, is_model_name

from .errors import BadRequestError, CaptureNotFoundError, StoreObjectMissingError
from .metrics import HubMetrics
from .model_config import CaptureConfig
from .settings import HubSettings
from .store import ObjectStore

__all__ = [
    "DEVICE_PARAMETERS",
    "Capture",
    "DeviceReport",
    "FileShardStore",
    "ObjectShardStore",
    "ShardInfo",
    "ShardStore",
    "device_report",
    "read_shard",
    "shard_store",
]

logger = logging.getLogger(__name__)

DEVICE_PARAMETERS = (
    "fallback_reason",
    "device_top_class",
    "device_confidence",
    "device_model_version",
    "device_id",
    "device_class",
    "capture",
)
"""The request parameters capture reads (docs/protocol.md, section 2.5)."""

DEFAULT_RETENTION_S = 7 * 86_400.0
"""For shards of a model whose capture settings this hub has not seen (since it started)."""
SWEEP_INTERVAL_S = 60.0
_TICK_S = 1.0
_SHARD = re.compile(r"^(\d{13})-(\d{1,9})-([0-9a-f]{8})\.npz$")


def shard_store(settings: HubSettings, objects: ObjectStore) -> ShardStore:
    """A folder when ``capture_store`` names one; otherwise the shared store every replica uses."""
    if settings.capture_store is not None:
        return FileShardStore(settings.capture_store)
    return ObjectShardStore(objects)


# -- what a device reports -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceReport:
    """A fallback request's parameters: why the device handed it over, and its own answer."""

    fallback_reason: str
    top_class: tuple[int, ...] | None = None
    """One per row; ``None`` when the device sent none (it did not run the model)."""
    confidence: tuple[float, ...] | None = None
    model_version: str = ""
    device_id: str = ""
    device_class: str = ""
    opted_out: bool = False


def _per_row(value: Any, name: str, kind: type) -> tuple[Any, ...]:
    """A number, or a string of comma-separated numbers (one per row)."""
    if isinstance(value, bool):
        raise BadRequestError(f"parameters.{name} must be a number or comma-separated numbers")
    if isinstance(value, (int, float)):
        values: list[Any] = [value]
    elif isinstance(value, str):
        try:
            values = [kind(part) for part in value.split(",")]
        except ValueError:
            raise BadRequestError(
                f"parameters.{name} must be a number or comma-separated numbers, got {value!r}"
            ) from None
    else:
        raise BadRequestError(f"parameters.{name} must be a number or comma-separated numbers")
    if kind is int and any(isinstance(v, float) and not v.is_integer() for v in values):
        raise BadRequestError(f"parameters.{name} must hold integers, got {value!r}")
    converted = tuple(kind(v) for v in values)
    if kind is float and not all(math.isfinite(v) for v in converted):
        raise BadRequestError(f"parameters.{name} must hold finite numbers, got {value!r}")
    return converted


def _text(parameters: Mapping[str, Any], name: str) -> str:
    value = parameters.get(name, "")
    if not isinstance(value, str) or len(value) > 256:
        raise BadRequestError(f"parameters.{name} must be a string of at most 256 characters")
    return value


def device_report(parameters: Mapping[str, Any] | None) -> DeviceReport | None:
    """The device's report in a request's parameters; ``None`` when it is not a fallback.
    :class:`BadRequestError` for a parameter of the wrong type."""
    if not parameters or "fallback_reason" not in parameters:
        return None
    capture = parameters.get("capture", True)
    if not isinstance(capture, bool):
        raise BadRequestError("parameters.capture must be a boolean")
    top = parameters.get("device_top_class")
    conf = parameters.get("device_confidence")
    return DeviceReport(
        fallback_reason=_text(parameters, "fallback_reason"),
        top_class=None if top is None else _per_row(top, "device_top_class", int),
        confidence=None if conf is None else _per_row(conf, "device_confidence", float),
        model_version=_text(parameters, "device_model_version"),
        device_id=_text(parameters, "device_id"),
        device_class=_text(parameters, "device_class"),
        opted_out=not capture,
    )


# -- the store -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ShardInfo:
    model: str
    shard: str
    records: int
    size_bytes: int
    created_s: float
    """Unix time of the write."""

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "shard": self.shard,
            "records": self.records,
            "size_bytes": self.size_bytes,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_s)),
            "created_s": self.created_s,
        }


def shard_name(created_s: float, records: int) -> str:
    """``<unix ms>-<records>-<random>.npz``: listing needs no file opened."""
    return f"{int(created_s * 1000):013d}-{records}-{uuid.uuid4().hex[:8]}.npz"


def parse_shard_name(model: str, shard: str, size_bytes: int) -> ShardInfo | None:
    match = _SHARD.match(shard)
    if match is None:
        return None
    return ShardInfo(
        model=model,
        shard=shard,
        records=int(match.group(2)),
        size_bytes=size_bytes,
        created_s=int(match.group(1)) / 1000,
    )


class ShardStore(Protocol):
    """Where shards live: one namespace per model, shards named by :func:`shard_name`."""

    def write_shard(self, model: str, shard: str, data: bytes) -> ShardInfo: ...

    def list(self, model: str | None = None) -> list[ShardInfo]:
        """Oldest first."""
        ...

    def read(self, model: str, shard: str) -> bytes: ...

    def delete(self, model: str, shard: str) -> bool:
        """``False`` when there was no such shard."""
        ...


def _check_names(model: str, shard: str | None = None) -> None:
    if not is_model_name(model):
        raise CaptureNotFoundError(f"no captured model {model!r}")
    if shard is not None and not _SHARD.match(shard):
        raise CaptureNotFoundError(f"no shard {shard!r} of {model!r}")


class FileShardStore:
    """Shards as files: ``<root>/<model>/<shard>.npz``, each written to a temporary file and
    renamed into place, so a listed shard is always whole."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write_shard(self, model: str, shard: str, data: bytes) -> ShardInfo:
        _check_names(model, shard)
        folder = self.root / model
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, folder / shard)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        info = parse_shard_name(model, shard, len(data))
        assert info is not None
        return info

    def list(self, model: str | None = None) -> list[ShardInfo]:
        if model is not None:
            _check_names(model)
        if not self.root.is_dir():
            return []
        folders = [self.root / model] if model is not None else sorted(self.root.iterdir())
        found: list[ShardInfo] = []
        for folder in folders:
            if not folder.is_dir() or not is_model_name(folder.name):
                continue
            for path in folder.iterdir():
                try:
                    size = path.stat().st_size
                except OSError:  # deleted meanwhile
                    continue
                info = parse_shard_name(folder.name, path.name, size)
                if info is not None:
                    found.append(info)
        return sorted(found, key=lambda i: (i.created_s, i.model, i.shard))

    def read(self, model: str, shard: str) -> bytes:
        _check_names(model, shard)
        try:
            return (self.root / model / shard).read_bytes()
        except FileNotFoundError:
            raise CaptureNotFoundError(f"no shard {shard!r} of {model!r}") from None

    def delete(self, model: str, shard: str) -> bool:
        _check_names(model, shard)
        try:
            (self.root / model / shard).unlink()
        except FileNotFoundError:
            return False
        return True


class ObjectShardStore:
    """Shards in the hub's shared store (:mod:`cloud_hub.store`), as
    ``.capture/<model>/<shard>``: every replica writes its own shards (names are unique) and
    lists, serves and deletes all of them. A store write is atomic, so a listed shard is whole."""

    PREFIX = ".capture"

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    def write_shard(self, model: str, shard: str, data: bytes) -> ShardInfo:
        _check_names(model, shard)
        self.objects.put(f"{self.PREFIX}/{model}/{shard}", data)
        info = parse_shard_name(model, shard, len(data))
        assert info is not None
        return info

    def list(self, model: str | None = None) -> list[ShardInfo]:
        if model is not None:
            _check_names(model)
        prefix = f"{self.PREFIX}/{model}/" if model is not None else f"{self.PREFIX}/"
        found: list[ShardInfo] = []
        for obj in self.objects.list_objects(prefix):
            parts = obj.key.split("/")
            if len(parts) != 3 or not is_model_name(parts[1]):
                continue
            info = parse_shard_name(parts[1], parts[2], obj.size_bytes)
            if info is not None:
                found.append(info)
        return sorted(found, key=lambda i: (i.created_s, i.model, i.shard))

    def read(self, model: str, shard: str) -> bytes:
        _check_names(model, shard)
        try:
            return self.objects.get(f"{self.PREFIX}/{model}/{shard}")
        except StoreObjectMissingError:
            raise CaptureNotFoundError(f"no shard {shard!r} of {model!r}") from None

    def delete(self, model: str, shard: str) -> bool:
        _check_names(model, shard)
        key = f"{self.PREFIX}/{model}/{shard}"
        if self.objects.stat(key) is None:
            return False
        self.objects.delete(key)
        return True


def read_shard(data: bytes) -> dict[str, np.ndarray[Any, Any]]:
    """A shard's arrays (no pickles are loaded)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: np.asarray(npz[name]) for name in npz.files}


# -- the recorder --------------------------------------------------------------------------------


class CaptureMetrics:
    def __init__(self, metrics: HubMetrics) -> None:
        r = metrics.registry
        self.records = Counter(
            "hub_capture_records",
            "Fallback requests seen by capture, by outcome: stored, sampled_out, opted_out, "
            "unsupported (BYTES tensors)",
            ["model", "outcome"],
            registry=r,
        )
        self.shards = Counter(
            "hub_capture_shards_written", "Capture shards written", ["model"], registry=r
        )
        self.deleted = Counter(
            "hub_capture_shards_deleted",
            "Capture shards deleted, by reason: retention, size, api",
            ["model", "reason"],
            registry=r,
        )
        self.stored_bytes = Gauge(
            "hub_capture_stored_bytes", "Bytes of capture shards kept", ["model"], registry=r
        )
        self.buffered = Gauge(
            "hub_capture_buffered_records",
            "Records waiting to be written as a shard",
            ["model"],
            registry=r,
        )
        self.write_errors = Counter(
            "hub_capture_write_errors", "Shards that could not be written", ["model"], registry=r
        )


@dataclass
class _Buffer:
    model: str
    config: CaptureConfig
    started_s: float
    columns: dict[str, list[Any]] = field(default_factory=dict)
    records: int = 0

    def add(self, column: str, values: list[Any]) -> None:
        self.columns.setdefault(column, []).extend(values)


class Capture:
    """Samples fallback requests into per-model buffers and writes them as shards.

    :meth:`record` runs on the event loop and only copies arrays into a buffer; a background
    thread (:meth:`start`) writes full or old buffers and enforces the bounds.
    """

    def __init__(
        self,
        store: ShardStore,
        metrics: HubMetrics,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self._metrics = CaptureMetrics(metrics)
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._buffers: dict[tuple[str, str], _Buffer] = {}
        self._configs: dict[str, CaptureConfig] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sweep_s = 0.0

    # -- on the request path -----------------------------------------------------------------

    def inspect(self, config: CaptureConfig | None, request: Any) -> DeviceReport | None:
        """The device's report when this request may be captured (checked before it runs, so a
        malformed parameter is a 400 and nothing runs); ``None`` otherwise."""
        if config is None:
            return None
        return device_report(request.parameters)

    def record(
        self,
        *,
        model: str,
        model_version: str,
        config: CaptureConfig,
        batched: bool,
        decoded: DecodedRequest,
        outputs: Mapping[str, np.ndarray[Any, Any]],
        report: DeviceReport,
        device_id: str | None,
    ) -> None:
        """Keep one answered fallback request (or count why not)."""
        if report.opted_out:
            self._metrics.records.labels(model=model, outcome="opted_out").inc()
            return
        if config.sample_rate < 1.0 and self._rng.random() >= config.sample_rate:
            self._metrics.records.labels(model=model, outcome="sampled_out").inc()
            return
        arrays = {f"input.{k}": np.asarray(v) for k, v in decoded.tensors.items()}
        arrays.update({f"output.{k}": np.asarray(v) for k, v in outputs.items()})
        if any(a.dtype == object for a in arrays.values()):
            self._metrics.records.labels(model=model, outcome="unsupported").inc()
            return
        if batched:
            rows = {a.shape[0] for a in arrays.values() if a.ndim > 0}
            if len(rows) != 1:
                self._metrics.records.labels(model=model, outcome="unsupported").inc()
                return
            count = rows.pop()
            split = {k: list(a) for k, a in arrays.items()}
        else:
            count = 1
            split = {k: [a] for k, a in arrays.items()}
        top = report.top_class
        conf = report.confidence
        if top is not None and len(top) != count:
            top = top * count if len(top) == 1 else None
        if conf is not None and len(conf) != count:
            conf = conf * count if len(conf) == 1 else None
        now = self._clock()
        signature = repr(
            sorted((k, a.dtype.str, a.shape[1:] if batched else a.shape) for k, a in arrays.items())
        )
        request_id = decoded.request.id or ""
        with self._lock:
            self._configs[model] = config
            buffer = self._buffers.get((model, signature))
            if buffer is None:
                buffer = _Buffer(model=model, config=config, started_s=now)
                self._buffers[(model, signature)] = buffer
            for key, values in split.items():
                buffer.add(key, [np.array(v, copy=True) for v in values])
            buffer.add("device_top_class", list(top) if top is not None else [-1] * count)
            buffer.add("device_confidence", list(conf) if conf is not None else [math.nan] * count)
            buffer.add("fallback_reason", [report.fallback_reason] * count)
            buffer.add("device_id", [device_id or report.device_id] * count)
            buffer.add("device_class", [report.device_class] * count)
            buffer.add("device_model_version", [report.model_version] * count)
            buffer.add("request_id", [request_id] * count)
            buffer.add("model_version", [model_version] * count)
            buffer.add("time_s", [now] * count)
            buffer.records += count
            full = buffer.records >= config.shard_records
            buffered = sum(b.records for (m, _), b in self._buffers.items() if m == model)
        self._metrics.records.labels(model=model, outcome="stored").inc(count)
        self._metrics.buffered.labels(model=model).set(buffered)
        if full:
            self._wake.set()

    # -- writing -----------------------------------------------------------------------------

    def flush(self, model: str | None = None) -> list[ShardInfo]:
        """Write every buffered record (of ``model``) now; the shards written."""
        with self._lock:
            keys = [k for k in self._buffers if model is None or k[0] == model]
            taken = [self._buffers.pop(k) for k in keys]
        return self._write(taken)

    def _due(self) -> list[_Buffer]:
        now = self._clock()
        with self._lock:
            keys = [
                k
                for k, b in self._buffers.items()
                if b.records >= b.config.shard_records
                or now - b.started_s >= b.config.flush_interval_s
            ]
            return [self._buffers.pop(k) for k in keys]

    def _write(self, buffers: list[_Buffer]) -> list[ShardInfo]:
        written: list[ShardInfo] = []
        with self._write_lock:
            for buffer in buffers:
                info = self._write_one(buffer)
                if info is not None:
                    written.append(info)
                self._metrics.buffered.labels(model=buffer.model).set(self.buffered(buffer.model))
            for model in {b.model for b in buffers}:
                self._enforce(model)
        return written

    def _write_one(self, buffer: _Buffer) -> ShardInfo | None:
        arrays: dict[str, np.ndarray[Any, Any]] = {}
        for key, values in buffer.columns.items():
            if key.startswith(("input.", "output.")):
                arrays[key] = np.stack(values)
            elif key in ("device_top_class",):
                arrays[key] = np.asarray(values, dtype=np.int64)
            elif key == "device_confidence":
                arrays[key] = np.asarray(values, dtype=np.float32)
            elif key == "time_s":
                arrays[key] = np.asarray(values, dtype=np.float64)
            else:
                arrays[key] = np.asarray(values, dtype=np.str_)
        out = io.BytesIO()
        np.savez_compressed(out, **arrays)  # type: ignore[arg-type]
        name = shard_name(self._clock(), buffer.records)
        try:
            info = self.store.write_shard(buffer.model, name, out.getvalue())
        except OSError:
            logger.exception("capture shard of %s not written", buffer.model)
            self._metrics.write_errors.labels(model=buffer.model).inc()
            return None
        self._metrics.shards.labels(model=buffer.model).inc()
        return info

    def buffered(self, model: str) -> int:
        with self._lock:
            return sum(b.records for (m, _), b in self._buffers.items() if m == model)

    # -- bounds ------------------------------------------------------------------------------

    def _enforce(self, model: str) -> None:
        """Retention, then the size bound (oldest first), for one model's shards."""
        config = self._configs.get(model)
        retention_s = config.retention_s if config is not None else DEFAULT_RETENTION_S
        shards = self.store.list(model)
        now = self._clock()
        kept: list[ShardInfo] = []
        for info in shards:
            if now - info.created_s > retention_s:
                if self.store.delete(model, info.shard):
                    self._metrics.deleted.labels(model=model, reason="retention").inc()
            else:
                kept.append(info)
        total = sum(i.size_bytes for i in kept)
        if config is not None:
            while kept and total > config.max_bytes:
                oldest = kept.pop(0)
                if self.store.delete(model, oldest.shard):
                    self._metrics.deleted.labels(model=model, reason="size").inc()
                total -= oldest.size_bytes
        self._metrics.stored_bytes.labels(model=model).set(total)

    def sweep(self) -> None:
        """Retention and size for every model with shards."""
        with self._write_lock:
            for model in sorted({i.model for i in self.store.list()} | set(self._configs)):
                self._enforce(model)

    def delete(self, model: str, shard: str | None = None) -> int:
        """Delete one shard, or every shard of ``model`` (its buffer too); how many shards."""
        with self._write_lock:
            if shard is None:
                with self._lock:
                    for key in [k for k in self._buffers if k[0] == model]:
                        del self._buffers[key]
                shards = [i.shard for i in self.store.list(model)]
            else:
                shards = [shard]
            deleted = sum(self.store.delete(model, s) for s in shards)
            if shard is not None and not deleted:
                raise CaptureNotFoundError(f"no shard {shard!r} of {model!r}")
            self._metrics.deleted.labels(model=model, reason="api").inc(deleted)
            self._enforce(model)
        self._metrics.buffered.labels(model=model).set(self.buffered(model))
        return deleted

    def shards(self, model: str | None = None) -> list[ShardInfo]:
        """Listed after the bounds are applied, so nothing past its retention is offered."""
        if model is not None:
            _check_names(model)
        with self._write_lock:
            for name in sorted({i.model for i in self.store.list(model)}):
                self._enforce(name)
        return self.store.list(model)

    def records(self, model: str) -> Iterator[dict[str, np.ndarray[Any, Any]]]:
        """Every shard of ``model``, read."""
        for info in self.shards(model):
            try:
                yield read_shard(self.store.read(model, info.shard))
            except CaptureNotFoundError:  # deleted meanwhile
                continue

    # -- the background thread ---------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write what is buffered."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(_TICK_S)
            self._wake.clear()
            try:
                due = self._due()
                if due:
                    self._write(due)
                if self._clock() - self._last_sweep_s >= SWEEP_INTERVAL_S:
                    self._last_sweep_s = self._clock()
                    self.sweep()
            except Exception:
                logger.exception("capture writer failed; trying again")
