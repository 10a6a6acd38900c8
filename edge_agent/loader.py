"""How this agent loads a model, decided once: the runtime, the child-process probe, the
timeouts. The registry loads the configured models with it at start; the updater loads new
versions, and the versions it rolls back to, with the same one.

    ModelLoader.load ─► probe.probe_model (child process, optional) ─► models.load_model
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import AgentConfig, ModelConfig
from .errors import ModelLoadError
from .models import LoadedModel, check_model_file, load_error, load_model
from .probe import probe_model
from .runtime import RuntimeInfo

__all__ = ["ModelLoader"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelLoader:
    runtime: RuntimeInfo
    worker_timeout_s: float = 30.0
    """How long a request waits for a free interpreter of a model loaded here."""
    probe: bool = False
    """Load each model in a child process first (``probe_models``)."""
    probe_timeout_s: float = 120.0

    @classmethod
    def for_agent(cls, config: AgentConfig, runtime: RuntimeInfo) -> ModelLoader:
        """The loader ``config`` asks for (``worker_timeout_s``, ``probe_models``,
        ``probe_timeout_s``)."""
        return cls(
            runtime=runtime,
            worker_timeout_s=config.worker_timeout_s,
            probe=config.probe_models,
            probe_timeout_s=config.probe_timeout_s,
        )

    def load(self, config: ModelConfig, *, probe: bool | None = None) -> LoadedModel:
        """The model loaded and warmed up; ``probe`` overrides the loader's choice for this
        load. Every failure is a :class:`ModelLoadError` whose message names the model."""
        if self.probe if probe is None else probe:
            path = check_model_file(config)
            try:
                probe_model(
                    self.runtime.name, path, threads=config.threads, timeout_s=self.probe_timeout_s
                )
            except ModelLoadError as exc:
                raise load_error(config, exc) from exc
        return load_model(config, self.runtime, worker_timeout_s=self.worker_timeout_s)
