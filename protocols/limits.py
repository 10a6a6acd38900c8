"""Size limits every decoder enforces, so that no message can make a process allocate without bound."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits"]


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Bounds checked while decoding, before anything large is allocated.

    The defaults admit a batch of 64 224x224x3 FP32 images in one request and little more;
    servers expose every field in their configuration.
    """

    payload_max_bytes: int = 64 * 1024 * 1024
    """Whole HTTP body or MQTT payload."""
    header_max_bytes: int = 16 * 1024 * 1024
    """The JSON part of a message (all of it for plain JSON)."""
    tensor_max_elements: int = 1 << 26
    """Elements in one tensor (the product of its shape), and so the largest dimension of any
    shape, even one with a zero elsewhere."""
    tensor_max_dims: int = 16
    """Dimensions in one shape."""
    bytes_element_max_bytes: int = 16 * 1024 * 1024
    """One element of a BYTES tensor."""
    tensors_max: int = 256
    """Input or output tensors in one message."""

    def __post_init__(self) -> None:
        for name in (
            "payload_max_bytes",
            "header_max_bytes",
            "tensor_max_elements",
            "tensor_max_dims",
            "bytes_element_max_bytes",
            "tensors_max",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = Limits()
