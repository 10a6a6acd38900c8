"""A loaded model: its signature, its pool of interpreters, and the checks every input passes.

:func:`load_model` opens a model in this process; :class:`~edge_agent.loader.ModelLoader` adds
the child-process probe and the agent's settings on top.

Each worker owns one interpreter, since a TFLite interpreter must not run two requests at once. A
request takes an idle interpreter from the pool, runs, and puts it back; ``invoke`` releases the
GIL, so ``workers`` requests of one model really run in parallel. Inputs are checked against the
signature before any interpreter is taken, so a bad request never holds a worker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from protocols import DatatypeError, ModelMetadata, TensorMetadata, datatype_of

from .config import ModelConfig
from .errors import AgentError, InputError, ModelLoadError, UnavailableError
from .runtime import Array, Backend, ModelSignature, RuntimeInfo, TensorSpec

__all__ = ["LoadedModel", "RunWatch", "check_model_file", "load_error", "load_model", "read_labels"]

logger = logging.getLogger(__name__)

PLATFORM = "tensorflow_lite"
RUN_TIME_SMOOTHING = 0.1
"""Weight of the newest run in the moving average of run times (latency budget estimates)."""


class RunWatch(Protocol):
    """What sees every run of a watched model (the updater's health window)."""

    def observe(self, run_s: float, outputs: Mapping[str, Array]) -> None: ...

    def error(self, exc: BaseException) -> None: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class _Expected:
    spec: TensorSpec
    dtype: np.dtype[np.generic]
    rank: int


class LoadedModel:
    """A model ready to serve. Thread-safe: any number of callers may ``infer`` at once."""

    def __init__(
        self,
        *,
        config: ModelConfig,
        runtime: RuntimeInfo,
        signature: ModelSignature,
        backends: list[Backend],
        labels: tuple[str, ...] = (),
        worker_timeout_s: float = 30.0,
    ) -> None:
        self.config = config
        self.name = config.name
        self.version = config.version
        self.runtime = runtime
        self.signature = signature
        self.labels = labels
        self.batched = signature.batched
        """The model's first dimension is the batch (see :attr:`ModelSignature.batched`)."""
        self.worker_count = len(backends)
        self._worker_timeout_s = worker_timeout_s
        self._expected = tuple(
            _Expected(spec=spec, dtype=spec.datatype.numpy_dtype, rank=len(spec.shape))
            for spec in signature.inputs
        )
        self._output_names = tuple(spec.name for spec in signature.outputs)
        self._idle: queue.SimpleQueue[Backend] = queue.SimpleQueue()
        for backend in backends:
            self._idle.put(backend)
        self._load_lock = threading.Lock()
        self._inside = 0
        self._mean_run_s = 0.0
        self.watch: RunWatch | None = None
        """Set by the updater during a new version's health window."""

    def infer(
        self, inputs: Mapping[str, Array], outputs: Sequence[str] | None = None
    ) -> dict[str, Array]:
        """Outputs by name (only those in ``outputs`` when given).

        :class:`InputError` for inputs that do not fit the signature or unknown output names.
        """
        checked = self.check(inputs, outputs)
        with self._load_lock:
            self._inside += 1
        try:
            try:
                backend = self._idle.get(block=False)
            except queue.Empty:
                try:
                    backend = self._idle.get(timeout=self._worker_timeout_s)
                except queue.Empty:
                    raise UnavailableError(
                        f"all {self.worker_count} workers of model {self.name!r} stayed busy for "
                        f"{self._worker_timeout_s:g} s"
                    ) from None
            start = time.perf_counter()
            try:
                result = backend.infer(checked)
            except Exception as exc:
                if self.watch is not None:
                    self.watch.error(exc)
                raise
            finally:
                self._idle.put(backend)
            run_s = time.perf_counter() - start
            if self.watch is not None:
                self.watch.observe(run_s, result)
        finally:
            with self._load_lock:
                self._inside -= 1
        with self._load_lock:
            if self._mean_run_s == 0.0:
                self._mean_run_s = run_s
            else:
                self._mean_run_s += RUN_TIME_SMOOTHING * (run_s - self._mean_run_s)
        if outputs is None:
            return result
        return {name: result[name] for name in outputs}

    def check(
        self, inputs: Mapping[str, Array], outputs: Sequence[str] | None = None
    ) -> dict[str, Array]:
        """``inputs`` as the interpreter takes them; :class:`InputError` if they do not fit."""
        checked = _check_inputs(self.name, self._expected, inputs)
        if outputs is not None:
            self._check_outputs(outputs)
        return checked

    def expected_latency_s(self) -> float:
        """What a request arriving now would take here: its wait for a worker (the requests
        already inside, spread over the workers) plus one run, from the recent run times."""
        with self._load_lock:
            ahead = max(0, self._inside - self.worker_count + 1)
            return (1.0 + ahead / self.worker_count) * self._mean_run_s

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._output_names

    def _check_outputs(self, outputs: Sequence[str]) -> None:
        unknown = [name for name in outputs if name not in self._output_names]
        if unknown:
            raise InputError(
                f"model {self.name!r} has no output {', '.join(map(repr, unknown))}; its outputs "
                f"are {', '.join(map(repr, self._output_names))}"
            )

    def metadata(self) -> ModelMetadata:
        return ModelMetadata(
            name=self.name,
            versions=[self.version],
            platform=PLATFORM,
            inputs=[_tensor_metadata(spec) for spec in self.signature.inputs],
            outputs=[_tensor_metadata(spec) for spec in self.signature.outputs],
            parameters={
                "runtime": self.runtime.name,
                "quantized": self.signature.quantized,
                "threads": self.config.threads,
                "workers": self.worker_count,
                "labels": len(self.labels),
            },
        )

    def retire(self, grace_s: float = 1.0, timeout_s: float = 30.0) -> None:
        """Close once the requests that still hold this model are done: after a swap, requests
        that took it from the registry just before finish on it, and none fails."""
        time.sleep(grace_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._load_lock:
                if self._inside == 0:
                    break
            time.sleep(0.01)
        self.close(timeout_s=max(0.0, deadline - time.monotonic()) or 0.1)

    def close(self, timeout_s: float = 5.0) -> None:
        """Close every interpreter, waiting up to ``timeout_s`` for busy ones to come back."""
        for _ in range(self.worker_count):
            try:
                self._idle.get(timeout=timeout_s).close()
            except queue.Empty:
                logger.warning("model %s: a worker was still busy at close", self.name)
                return


def _tensor_metadata(spec: TensorSpec) -> TensorMetadata:
    return TensorMetadata(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))


def _check_inputs(
    model: str, expected: tuple[_Expected, ...], inputs: Mapping[str, Array]
) -> dict[str, Array]:
    """``inputs`` as the interpreter needs them (C-contiguous), or :class:`InputError`."""
    if len(inputs) != len(expected) or any(e.spec.name not in inputs for e in expected):
        names = [e.spec.name for e in expected]
        unknown = [name for name in inputs if name not in names]
        missing = [name for name in names if name not in inputs]
        problems = []
        if unknown:
            problems.append(f"it has no input {', '.join(map(repr, unknown))}")
        if missing:
            problems.append(f"input {', '.join(map(repr, missing))} is missing")
        raise InputError(
            f"model {model!r}: {' and '.join(problems)}; its inputs are {', '.join(map(repr, names))}"
        )
    checked: dict[str, Array] = {}
    for item in expected:
        spec = item.spec
        array = inputs[spec.name]
        if not isinstance(array, np.ndarray):
            array = np.asarray(array)
        if array.dtype != item.dtype:
            raise InputError(
                f"model {model!r}: input {spec.name!r} is {_wire_name(array.dtype)}; "
                f"the model takes {spec.datatype.value}"
            )
        shape = array.shape
        if (
            len(shape) != item.rank
            or 0 in shape
            or any(want != got and want != -1 for want, got in zip(spec.shape, shape, strict=True))
        ):
            raise InputError(
                f"model {model!r}: input {spec.name!r} has shape {list(shape)}; the model takes "
                f"{list(spec.shape)} (-1: any size of at least 1)"
            )
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        checked[spec.name] = array
    return checked


def _wire_name(dtype: np.dtype[np.generic]) -> str:
    try:
        return datatype_of(dtype).value
    except DatatypeError:
        return f"numpy {dtype}"


def read_labels(path: Path) -> tuple[str, ...]:
    """One label per line; trailing blank lines dropped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read labels file {path}: {exc}") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    return tuple(line.strip() for line in lines)


def check_model_file(config: ModelConfig) -> Path:
    """The model's file; :class:`ModelLoadError` when it is missing or not a file."""
    path = config.path
    if not path.exists():
        raise ModelLoadError(f"model {config.name!r}: file {path} does not exist")
    if not path.is_file():
        raise ModelLoadError(f"model {config.name!r}: {path} is not a file")
    return path


def load_error(config: ModelConfig, exc: AgentError) -> ModelLoadError:
    """``exc`` as a :class:`ModelLoadError` whose message starts with the model's name."""
    message = str(exc)
    prefix = f"model {config.name!r}: "
    return ModelLoadError(message if message.startswith(prefix) else prefix + message)


def load_model(
    config: ModelConfig, runtime: RuntimeInfo, *, worker_timeout_s: float = 30.0
) -> LoadedModel:
    """Open ``config.workers`` interpreters of the model in this process and run each once
    (warm-up). Every failure is a :class:`ModelLoadError` whose message names the model and the
    cause."""
    path = check_model_file(config)
    backends: list[Backend] = []
    try:
        labels = read_labels(config.labels) if config.labels is not None else ()
        signature: ModelSignature | None = None
        for _ in range(config.workers):
            backend = runtime.new_backend()
            loaded = backend.load(path, threads=config.threads)
            backends.append(backend)
            signature = signature or loaded
            _warm_up(backend, loaded)
        assert signature is not None  # workers >= 1
    except AgentError as exc:
        for backend in backends:
            backend.close()
        raise load_error(config, exc) from exc
    _check_labels(config, signature, labels)
    return LoadedModel(
        config=config,
        runtime=runtime,
        signature=signature,
        backends=backends,
        labels=labels,
        worker_timeout_s=worker_timeout_s,
    )


def _warm_up(backend: Backend, signature: ModelSignature) -> None:
    """One run on zeros: the first invoke prepares kernels (XNNPACK packs weights) and must not
    land on a caller's request."""
    zeros = {
        spec.name: np.zeros([max(dim, 1) for dim in spec.shape], dtype=spec.datatype.numpy_dtype)
        for spec in signature.inputs
    }
    try:
        backend.infer(zeros)
    except AgentError as exc:
        raise ModelLoadError(f"warm-up run failed: {exc}") from exc


def _check_labels(config: ModelConfig, signature: ModelSignature, labels: tuple[str, ...]) -> None:
    if not labels or not signature.outputs:
        return
    classes = signature.outputs[0].shape[-1] if signature.outputs[0].shape else -1
    if classes > 0 and classes != len(labels):
        logger.warning(
            "model %s: %d labels for %d classes in output %r",
            config.name,
            len(labels),
            classes,
            signature.outputs[0].name,
        )
