"""The configured models and the state of each: loading, ready, or failed with a reason.

A model that fails to load stays in the registry as ``failed`` with its reason, so status, metrics
and ``/v2/models/{m}/ready`` can say why, while the other models serve.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from .config import ModelConfig
from .errors import ModelLoadError, ModelNotFoundError, ModelNotReadyError
from .loader import ModelLoader
from .models import LoadedModel
from .runtime import RuntimeInfo

__all__ = ["ModelRegistry", "ModelState", "ModelStatus"]

logger = logging.getLogger(__name__)


class ModelState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelStatus:
    name: str
    version: str
    state: ModelState
    path: str
    error: str | None = None
    """Why the load failed (``failed`` only)."""


class ModelRegistry:
    """Configured models by name. Reads are lock-free; loads replace entries whole."""

    def __init__(self, configs: Sequence[ModelConfig]) -> None:
        self._configs = {config.name: config for config in configs}
        self._loaded: dict[str, LoadedModel] = {}
        self._status = {
            config.name: ModelStatus(
                name=config.name,
                version=config.version,
                state=ModelState.LOADING,
                path=str(config.path),
            )
            for config in configs
        }
        self._lock = threading.Lock()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._configs)

    def knows(self, name: str) -> bool:
        return name in self._configs

    def load_all(
        self, loader: ModelLoader | RuntimeInfo | None, *, runtime_error: str | None = None
    ) -> None:
        """Load every model in config order; a failure is recorded and logged, never raised.

        ``None``: there is no runtime, and every model fails with ``runtime_error``. A bare
        :class:`RuntimeInfo` loads with :class:`ModelLoader`'s defaults (no probe)."""
        if isinstance(loader, RuntimeInfo):
            loader = ModelLoader(runtime=loader)
        for name, config in self._configs.items():
            if loader is None:
                self._fail(config, runtime_error or "no TFLite runtime")
                continue
            try:
                model = loader.load(config)
            except ModelLoadError as exc:
                self._fail(config, str(exc))
                continue
            with self._lock:
                self._loaded[name] = model
                self._status[name] = ModelStatus(
                    name=name, version=config.version, state=ModelState.READY, path=str(config.path)
                )
            logger.info(
                "model %s ready: %s, %d worker(s), %d thread(s) each, inputs %s",
                name,
                config.path,
                model.worker_count,
                config.threads,
                ", ".join(
                    f"{s.name} {s.datatype.value}{list(s.shape)}" for s in model.signature.inputs
                ),
            )

    def _fail(self, config: ModelConfig, reason: str) -> None:
        prefix = f"model {config.name!r}: "
        reason = reason.removeprefix(prefix)
        logger.error("model %s failed to load: %s", config.name, reason)
        with self._lock:
            self._status[config.name] = ModelStatus(
                name=config.name,
                version=config.version,
                state=ModelState.FAILED,
                path=str(config.path),
                error=reason,
            )

    def replace(self, model: LoadedModel) -> LoadedModel | None:
        """Serve ``model`` (a new version of a configured model) from now on; the model it
        replaces is returned for the caller to retire. Requests already running keep theirs."""
        name = model.name
        if name not in self._configs:
            raise ModelNotFoundError(f"unknown model {name!r}")
        with self._lock:
            old = self._loaded.get(name)
            self._configs[name] = model.config
            self._loaded[name] = model
            self._status[name] = ModelStatus(
                name=name,
                version=model.version,
                state=ModelState.READY,
                path=str(model.config.path),
            )
        logger.info(
            "model %s now serves version %s from %s", name, model.version, model.config.path
        )
        return old

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """The model ready to serve, or :class:`ModelNotFoundError` / :class:`ModelNotReadyError`."""
        model = self._loaded.get(name)
        if model is None:
            self.raise_not_serving(name)
        if version is not None and version != model.version:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r}; it serves version {model.version!r}"
            )
        return model

    def raise_not_serving(self, name: str) -> NoReturn:
        status = self._status.get(name)
        if status is None:
            known = ", ".join(map(repr, self._configs)) or "none"
            raise ModelNotFoundError(f"unknown model {name!r}; models here: {known}")
        if status.state is ModelState.LOADING:
            raise ModelNotReadyError(f"model {name!r} is still loading")
        raise ModelNotReadyError(f"model {name!r} failed to load: {status.error}")

    def config(self, name: str) -> ModelConfig | None:
        return self._configs.get(name)

    def labels(self, name: str) -> tuple[str, ...]:
        """The model's class labels; none when it has none or is not loaded."""
        model = self._loaded.get(name)
        return () if model is None else model.labels

    def status(self, name: str) -> ModelStatus | None:
        return self._status.get(name)

    def statuses(self) -> tuple[ModelStatus, ...]:
        return tuple(self._status.values())

    def loaded(self) -> tuple[LoadedModel, ...]:
        return tuple(self._loaded.values())

    def close(self) -> None:
        with self._lock:
            models = list(self._loaded.values())
            self._loaded.clear()
        for model in models:
            model.close()
