"""Model backends, one module each, imported only when a model uses them."""

from .base import BACKENDS, MODEL_FILES, Backend, BackendName, BackendOptions, TensorSpec

__all__ = ["BACKENDS", "MODEL_FILES", "Backend", "BackendName", "BackendOptions", "TensorSpec"]
