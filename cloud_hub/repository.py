"""The model repository, in Triton's layout::

    <repository>/<model>/config.yaml
    <repository>/<model>/<version>/model.onnx | model.plan | model.tflite | model.qml.json

Models load only from folders directly under the repository. Loading a model loads the versions
its policy selects; a reload builds the new versions first and swaps them in only when all
loaded, so a failed load or reload leaves the serving versions in place and records why.
Unloading stops new requests at once and lets accepted ones finish.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocols import MODEL_NAME, Datatype, ModelMetadata, TensorMetadata, datatype_of

from .backends.base import Backend, BackendOptions, TensorSpec, load_backend_class
from .batcher import DynamicBatcher
from .errors import (
    BadRequestError,
    ConfigError,
    HubError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotLoadedError,
)
from .metrics import HubMetrics, VersionStats
from .model_config import DynamicBatching, ModelConfig, TensorConfig, load_model_config

__all__ = ["LoadedVersion", "ModelRepository", "ModelState"]

logger = logging.getLogger(__name__)


PLATFORMS = {
    "onnxruntime": "onnxruntime_onnx",
    "tensorrt": "tensorrt_plan",
    "tflite": "tflite",
    "quantum": "quantum_qml",
}

Arrays = dict[str, np.ndarray[Any, Any]]


class _ResponseCache:
    """A small LRU of outputs keyed by a hash of the inputs and the outputs asked for."""

    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[bytes, Arrays] = OrderedDict()
        self._max = max_entries

    @staticmethod
    def key(inputs: Mapping[str, np.ndarray[Any, Any]], outputs: tuple[str, ...]) -> bytes:
        digest = hashlib.blake2b(digest_size=20)
        for name in sorted(inputs):
            value = inputs[name]
            digest.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
            if value.dtype == object:
                for element in value.reshape(-1):
                    digest.update(len(element).to_bytes(4, "little") + element)
            else:
                digest.update(np.ascontiguousarray(value).reshape(-1).view(np.uint8).data)
        digest.update("\0".join(outputs).encode())
        return digest.digest()

    def get(self, key: bytes) -> Arrays | None:
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
        return hit

    def put(self, key: bytes, outputs: Arrays) -> None:
        self._entries[key] = outputs
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


@dataclass(eq=False)
class LoadedVersion:
    """One model version being served: backend, batcher, the tensors it takes, its stats."""

    model: str
    version: int
    config: ModelConfig
    backend: Backend
    inputs: list[TensorConfig]
    outputs: list[TensorConfig]
    labels: list[str] | None
    stats: VersionStats
    batcher: DynamicBatcher
    cache: _ResponseCache | None = None
    _input_map: dict[str, TensorConfig] = field(default_factory=dict)
    _output_names: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._input_map = {t.name: t for t in self.inputs}
        self._output_names = {t.name for t in self.outputs}

    @property
    def platform(self) -> str:
        return PLATFORMS[self.config.backend]

    def full_shape(self, tensor: TensorConfig) -> list[int]:
        return [-1, *tensor.dims] if self.config.max_batch_size else list(tensor.dims)

    def metadata(self, versions: list[str]) -> ModelMetadata:
        def meta(t: TensorConfig) -> TensorMetadata:
            return TensorMetadata(name=t.name, datatype=t.datatype, shape=self.full_shape(t))

        return ModelMetadata(
            name=self.model,
            versions=versions,
            platform=self.platform,
            inputs=[meta(t) for t in self.inputs],
            outputs=[meta(t) for t in self.outputs],
            parameters=None if self.backend.parameters is None else dict(self.backend.parameters),
        )

    def check_inputs(self, tensors: Mapping[str, np.ndarray[Any, Any]]) -> None:
        """Refuse, with a message naming the tensor, anything the model cannot take."""
        for name in tensors:
            if name not in self._input_map:
                raise BadRequestError(
                    f"model {self.model!r} has no input {name!r}; its inputs are "
                    f"{', '.join(repr(n) for n in self._input_map)}"
                )
        batch: int | None = None
        for spec in self.inputs:
            value = tensors.get(spec.name)
            if value is None:
                raise BadRequestError(f"input {spec.name!r} of model {self.model!r} is missing")
            actual = _wire_datatype(value)
            if actual is not spec.datatype:
                raise BadRequestError(
                    f"input {spec.name!r} is {actual.value}; model {self.model!r} expects {spec.datatype.value}"
                )
            expected = self.full_shape(spec)
            shape = list(value.shape)
            if len(shape) != len(expected) or any(
                e not in (-1, s) for e, s in zip(expected, shape, strict=True)
            ):
                raise BadRequestError(
                    f"input {spec.name!r} has shape {shape}; model {self.model!r} expects {expected}"
                    + (" (the first dimension is the batch)" if self.config.max_batch_size else "")
                )
            if self.config.max_batch_size:
                if not 1 <= shape[0] <= self.config.max_batch_size:
                    raise BadRequestError(
                        f"input {spec.name!r} has a batch of {shape[0]}; model {self.model!r} "
                        f"takes 1 to {self.config.max_batch_size}"
                    )
                if batch is not None and shape[0] != batch:
                    raise BadRequestError("all inputs must have the same batch size")
                batch = shape[0]
        self.backend.validate(tensors)

    def check_outputs(self, names: list[str]) -> None:
        for name in names:
            if name not in self._output_names:
                raise BadRequestError(
                    f"model {self.model!r} has no output {name!r}; its outputs are "
                    f"{', '.join(repr(t.name) for t in self.outputs)}"
                )

    async def infer(
        self,
        tensors: Mapping[str, np.ndarray[Any, Any]],
        *,
        outputs: list[str],
        timeout_s: float | None,
    ) -> Arrays:
        """Check, answer from the cache or run through the batcher; counts success and failure."""
        start = time.perf_counter()
        try:
            self.check_inputs(tensors)
            self.check_outputs(outputs)
            key = None
            if self.cache is not None:
                key = _ResponseCache.key(tensors, tuple(outputs))
                cached = self.cache.get(key)
                self.stats.cache(cached is not None, time.perf_counter() - start)
                if cached is not None:
                    self.stats.succeeded(time.perf_counter() - start)
                    return _select(cached, outputs)
            result = await self.batcher.infer(tensors, timeout_s=timeout_s)
            if self.cache is not None and key is not None:
                self.cache.put(key, result)
        except HubError as exc:
            self.stats.failed(type(exc).__name__, time.perf_counter() - start)
            raise
        except asyncio.CancelledError:
            self.stats.failed("cancelled", time.perf_counter() - start)
            raise
        self.stats.succeeded(time.perf_counter() - start)
        return _select(result, outputs)


def _select(result: Arrays, outputs: list[str]) -> Arrays:
    return {name: result[name] for name in outputs} if outputs else result


def _wire_datatype(value: np.ndarray[Any, Any]) -> Datatype:
    return datatype_of(value.dtype)


@dataclass(eq=False)
class ModelState:
    """A model folder and what is known of it."""

    name: str
    versions: dict[int, LoadedVersion] = field(default_factory=dict)
    state: str = "UNAVAILABLE"
    reason: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def version_names(self) -> list[str]:
        return [str(v) for v in sorted(self.versions)]


class ModelRepository:
    """Loads, serves and unloads the models of one repository folder. Use inside the event loop."""

    def __init__(self, root: Path, metrics: HubMetrics, *, drain_timeout_s: float = 30.0) -> None:
        self.root = root.resolve()
        if not self.root.is_dir():
            raise ConfigError(f"model repository {root} is not a directory")
        self._metrics = metrics
        self._models: dict[str, ModelState] = {}
        self._drain_timeout_s = drain_timeout_s

    # -- discovery -------------------------------------------------------------------------------

    def folder(self, name: str) -> Path:
        """The model's folder, refusing names that would leave the repository."""
        if not MODEL_NAME.match(name):
            raise ModelNotFoundError(f"no model named {name!r} in the repository")
        path = (self.root / name).resolve()
        if path.parent != self.root or not (path / "config.yaml").is_file():
            raise ModelNotFoundError(f"no model named {name!r} in the repository")
        return path

    def discover(self) -> list[str]:
        names = []
        for path in sorted(self.root.iterdir()):
            try:
                self.folder(path.name)
            except ModelNotFoundError:
                continue
            names.append(path.name)
        return names

    def index(self) -> list[dict[str, str]]:
        """Triton's repository index: every model folder with its state."""
        out: list[dict[str, str]] = []
        for name in self.discover():
            model = self._models.get(name)
            if model is None or not model.versions:
                entry = {"name": name, "state": model.state if model else "UNAVAILABLE"}
                if model is not None and model.reason:
                    entry["reason"] = model.reason
                out.append(entry)
                continue
            for version in model.version_names:
                entry = {"name": name, "version": version, "state": model.state}
                if model.reason:
                    entry["reason"] = model.reason
                out.append(entry)
        return out

    # -- serving ---------------------------------------------------------------------------------

    def get(self, name: str, version: str | None = None) -> LoadedVersion:
        model = self._models.get(name)
        if model is None or not model.versions:
            if model is None:
                self.folder(name)  # 404 for names that are not in the repository at all
            raise ModelNotLoadedError(
                f"model {name!r} is not loaded"
                + (f": {model.reason}" if model and model.reason else "")
            )
        if version is None or version == "":
            return model.versions[max(model.versions)]
        try:
            return model.versions[int(version)]
        except (ValueError, KeyError):
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r} loaded; loaded: {', '.join(model.version_names)}"
            ) from None

    def versions(self, name: str) -> list[str]:
        model = self._models.get(name)
        return model.version_names if model else []

    def loaded(self) -> list[LoadedVersion]:
        return [v for m in self._models.values() for v in m.versions.values()]

    # -- control ---------------------------------------------------------------------------------

    async def load_all(self) -> None:
        for name in self.discover():
            try:
                await self.load(name)
            except HubError as exc:
                logger.error("model %s did not load: %s", name, exc.message)

    async def load(self, name: str) -> None:
        """Load or reload ``name``; on failure the versions already serving stay."""
        folder = self.folder(name)
        model = self._models.setdefault(name, ModelState(name=name))
        async with model.lock:
            try:
                config = load_model_config(folder / "config.yaml")
                backend_class = load_backend_class(config.backend)
                selected = self._select_versions(folder, config, backend_class.model_file())
                fresh: dict[int, LoadedVersion] = {}
                try:
                    for version in selected:
                        fresh[version] = await self._load_version(
                            name, folder, version, config, backend_class
                        )
                except BaseException:
                    for loaded in fresh.values():
                        await self._retire(loaded)
                    raise
            except HubError as exc:
                model.reason = f"load failed: {exc.message}"
                if not model.versions:
                    model.state = "UNAVAILABLE"
                logger.error("model %s: %s", name, model.reason)
                raise ModelLoadError(
                    f"model {name!r} failed to load: {exc.message}"
                    + ("; the previous versions keep serving" if model.versions else "")
                ) from exc
            old = model.versions
            model.versions = fresh
            model.state = "READY"
            model.reason = ""
            self._metrics.models_loaded.set(len(self.loaded()))
            logger.info("model %s: serving versions %s", name, ", ".join(model.version_names))
        for loaded in old.values():
            await self._retire(loaded)

    async def unload(self, name: str) -> None:
        self.folder(name)
        model = self._models.get(name)
        if model is None:
            return
        async with model.lock:
            old = model.versions
            model.versions = {}
            model.state = "UNAVAILABLE"
            model.reason = "unloaded"
            self._metrics.models_loaded.set(len(self.loaded()))
        for loaded in old.values():
            await self._retire(loaded)
        logger.info("model %s unloaded", name)

    async def close(self) -> None:
        for name in list(self._models):
            model = self._models[name]
            old, model.versions = model.versions, {}
            for loaded in old.values():
                await self._retire(loaded)

    # -- internals -------------------------------------------------------------------------------

    @staticmethod
    def _select_versions(folder: Path, config: ModelConfig, filename: str) -> list[int]:
        available = [
            int(p.name)
            for p in folder.iterdir()
            if p.is_dir() and p.name.isdigit() and (p / filename).is_file()
        ]
        if not available:
            raise ModelLoadError(f"no version folder holds a {filename}")
        selected = config.version_policy.select(available)
        if not selected:
            raise ModelLoadError(
                f"the version policy selects none of the versions present ({sorted(available)})"
            )
        return selected

    async def _load_version(
        self,
        name: str,
        folder: Path,
        version: int,
        config: ModelConfig,
        backend_class: type[Backend],
    ) -> LoadedVersion:
        path = folder / str(version) / backend_class.model_file()
        options = BackendOptions(
            instance_count=config.instance_count,
            intra_op_threads=config.intra_op_threads,
            inter_op_threads=config.inter_op_threads,
            device=config.device,
            parameters=config.parameters,
        )
        backend = await asyncio.to_thread(backend_class.load, path, options)
        try:
            _check_batch_limit(backend, config)
            inputs = _tensor_configs(config.inputs, backend.inputs, config, "input")
            outputs = _tensor_configs(config.outputs, backend.outputs, config, "output")
            labels = _labels(config, folder) or _own_labels(backend)
        except HubError:
            backend.close()
            raise
        stats = VersionStats(self._metrics, name, str(version))
        batching = config.dynamic_batching
        settings = batching or DynamicBatching()
        batcher = DynamicBatcher(
            backend,
            max_batch_size=config.max_batch_size,
            batching=batching is not None,
            max_queue_delay_us=settings.max_queue_delay_us,
            preferred_batch_sizes=settings.preferred_batch_sizes,
            max_queue_size=settings.max_queue_size,
            default_timeout_us=settings.default_timeout_us,
            instance_count=config.instance_count,
            observer=stats,
            name=f"{name}-{version}",
        )
        stats.loaded(True)
        cache = (
            _ResponseCache(config.response_cache.max_entries)
            if config.response_cache.enabled
            else None
        )
        logger.info("loaded %s version %d (%s)", name, version, backend.name)
        return LoadedVersion(
            model=name,
            version=version,
            config=config,
            backend=backend,
            inputs=inputs,
            outputs=outputs,
            labels=labels,
            stats=stats,
            batcher=batcher,
            cache=cache,
        )

    async def _retire(self, loaded: LoadedVersion) -> None:
        try:
            await loaded.batcher.close(drain_timeout_s=self._drain_timeout_s)
        finally:
            loaded.stats.loaded(False)
            await asyncio.to_thread(loaded.backend.close)


def _check_batch_limit(backend: Backend, config: ModelConfig) -> None:
    """A backend with fixed shape ranges (TensorRT profiles) caps the batches it can run."""
    ranges = backend.shape_ranges
    if not config.max_batch_size or not ranges:
        return
    for name, allowed in ranges.items():
        largest = allowed.max[0] if allowed.max else 0
        if config.max_batch_size > largest:
            raise ConfigError(
                f"max_batch_size {config.max_batch_size} is larger than the {largest} the engine's "
                f"optimization profile allows for input {name!r}; lower max_batch_size or rebuild the plan"
            )


def _tensor_configs(
    declared: list[TensorConfig] | None, found: list[TensorSpec], config: ModelConfig, kind: str
) -> list[TensorConfig]:
    """The model's tensors: from config.yaml when given (checked against the file), else derived."""
    by_name = {t.name: t for t in found}
    if declared is not None:
        for tensor in declared:
            spec = by_name.get(tensor.name)
            if spec is None:
                raise ModelLoadError(
                    f"config.yaml names {kind} {tensor.name!r}, which the model file does not have "
                    f"(it has {', '.join(repr(n) for n in by_name)})"
                )
            if spec.datatype is not tensor.datatype:
                raise ModelLoadError(
                    f"config.yaml says {kind} {tensor.name!r} is {tensor.datatype.value}; the model file "
                    f"says {spec.datatype.value}"
                )
        return declared
    out = []
    for spec in found:
        dims = list(spec.shape)
        if config.max_batch_size:
            if not dims:
                raise ModelLoadError(
                    f"{kind} {spec.name!r} is a scalar, so the model cannot batch; set max_batch_size: 0"
                )
            if dims[0] not in (-1, 0) and dims[0] < config.max_batch_size:
                raise ModelLoadError(
                    f"{kind} {spec.name!r} has a fixed first dimension of {dims[0]}, below "
                    f"max_batch_size {config.max_batch_size}; export the model with a dynamic batch "
                    "dimension or set max_batch_size: 0"
                )
            dims = dims[1:]
        out.append(TensorConfig(name=spec.name, datatype=spec.datatype, dims=dims))
    return out


def _own_labels(backend: Backend) -> list[str] | None:
    """The class names the model file itself carries, if any."""
    return list(backend.labels) if backend.labels is not None else None


def _labels(config: ModelConfig, folder: Path) -> list[str] | None:
    if config.labels is None:
        return None
    if isinstance(config.labels, list):
        return config.labels
    path = (folder / config.labels).resolve()
    if path.parent != folder.resolve() and folder.resolve() not in path.parents:
        raise ConfigError(f"labels file {config.labels!r} is outside the model's folder")
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise ConfigError(f"labels file {config.labels!r}: {exc}") from exc
