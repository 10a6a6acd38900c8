"""Model backends, one module each, imported only when a model uses them."""

from .base import BACKENDS, Backend, BackendName, BackendOptions, ShapeRange, TensorSpec

__all__ = ["BACKENDS", "Backend", "BackendName", "BackendOptions", "ShapeRange", "TensorSpec"]
