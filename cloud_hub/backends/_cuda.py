"""GPU memory and streams through pycuda, for backends that drive the GPU themselves (TensorRT).

Nothing here knows TensorRT, so it can be tested on any CUDA machine. pycuda is imported only by
:meth:`CudaDevice.open`. The device's *primary* context is retained, the one the CUDA runtime
(and so TensorRT) uses too, once per process and for its lifetime, as the runtime would keep it:
pycuda releases a context only from the thread that retained it, and models load and unload on
any thread. :meth:`CudaDevice.activate` makes the context current on the calling thread for the
span of a ``with`` block, so any thread may do GPU work; free GPU objects inside it too.

:class:`StreamBuffers` is one worker's set: a stream, and named device buffers with page-locked
host staging that grow to the largest tensor seen and never shrink. It is not thread-safe; keep
one per thread or worker (a pool of them), and use it only while its device is active.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError

__all__ = ["CudaDevice", "StreamBuffers", "grown_capacity"]

MIN_ALLOCATION_BYTES = 256
"""Device and staging buffers are never smaller than this (TensorRT wants 256-byte alignment)."""


def grown_capacity(current: int, needed: int) -> int:
    """The capacity a buffer of ``current`` bytes is grown to for ``needed`` bytes.

    Powers of two, so a batch that grows one row at a time costs a few allocations, not one
    each; ``current`` itself when it is already large enough.
    """
    if needed <= current:
        return current
    capacity = max(MIN_ALLOCATION_BYTES, current)
    while capacity < needed:
        capacity *= 2
    return capacity


def _import_driver() -> Any:
    try:
        import pycuda.driver as driver
    except ModuleNotFoundError as exc:
        raise BackendUnavailableError(
            "pycuda is not installed: install hybrid-inference[gpu] on a machine with an NVIDIA GPU"
        ) from exc
    except ImportError as exc:  # installed, but libcuda (the NVIDIA driver) is missing
        raise BackendUnavailableError(f"no CUDA driver found: pycuda cannot load ({exc})") from exc
    return driver


_devices: dict[tuple[int, int], CudaDevice] = {}
_devices_lock = threading.Lock()


class CudaDevice:
    """One GPU and its retained primary context; :meth:`open` gives one object per GPU."""

    def __init__(self, driver: Any, device: Any, context: Any, ordinal: int) -> None:
        self._driver = driver
        self._device = device
        self._context: Any = context
        self.ordinal = ordinal
        self.name: str = device.name()

    @classmethod
    def open(cls, ordinal: int = 0) -> CudaDevice:
        """Initialise CUDA and retain GPU ``ordinal``'s primary context (once per process).

        Raises :class:`BackendUnavailableError` with a one-line reason when pycuda, the driver
        or the device is missing.
        """
        driver = _import_driver()
        with _devices_lock:
            key = (id(driver), ordinal)
            device = _devices.get(key)
            if device is None:
                device = _devices[key] = cls._retain(driver, ordinal)
            return device

    @classmethod
    def _retain(cls, driver: Any, ordinal: int) -> CudaDevice:
        try:
            driver.init()
        except driver.Error as exc:
            raise BackendUnavailableError(f"no CUDA device found (CUDA driver: {exc})") from exc
        count = int(driver.Device.count())
        if count == 0:
            raise BackendUnavailableError("no CUDA device found")
        if not 0 <= ordinal < count:
            raise BackendUnavailableError(
                f"CUDA device {ordinal} not found: this machine has {count} (0 to {count - 1})"
            )
        try:
            device = driver.Device(ordinal)
            context = device.retain_primary_context()
        except driver.Error as exc:
            raise BackendUnavailableError(f"CUDA device {ordinal} cannot be used: {exc}") from exc
        return cls(driver, device, context, ordinal)

    @property
    def driver(self) -> Any:
        """The ``pycuda.driver`` module, for callers that catch its ``Error``."""
        return self._driver

    @contextmanager
    def activate(self) -> Iterator[None]:
        """Make this device's context current on the calling thread for the block."""
        self._context.push()
        try:
            yield
        finally:
            self._driver.Context.pop()


@dataclass
class _Buffer:
    device: Any
    """A ``DeviceAllocation``."""
    host: np.ndarray[Any, np.dtype[np.uint8]]
    """Page-locked staging of the same capacity, a view of ``pinned``."""
    pinned: Any
    """The ``HostAllocation`` behind ``host``."""
    capacity: int

    def free(self) -> None:
        self.device.free()
        self.pinned.free()


class StreamBuffers:
    """A CUDA stream with named device buffers that grow on demand.

    Create, use and close it only inside ``device.activate()``. A call's work is queued on the
    stream: :meth:`upload` inputs, hand :meth:`address` of each tensor to the kernel, queue
    :meth:`download` of each result, then :meth:`finish` waits and returns the host copies.
    """

    def __init__(self, device: CudaDevice) -> None:
        self._device = device
        self._driver = device.driver
        self._stream: Any = self._driver.Stream()
        self._buffers: dict[str, _Buffer] = {}
        self._pending: list[tuple[str, tuple[int, ...], np.dtype[Any], int]] = []

    @property
    def stream_handle(self) -> int:
        """The ``cudaStream_t`` as an integer, for libraries that take one (TensorRT)."""
        return int(self._stream.handle)

    def reserve(self, name: str, nbytes: int) -> int:
        """The device address of buffer ``name``, grown to hold at least ``nbytes``.

        Growing drops the old contents; call it before queueing work that uses the buffer.
        """
        buffer = self._buffers.get(name)
        current = buffer.capacity if buffer is not None else 0
        capacity = grown_capacity(current, max(nbytes, 1))
        if buffer is None or capacity != buffer.capacity:
            if buffer is not None:
                # The stream may still read the old allocation (a previous call's work).
                self._stream.synchronize()
                buffer.free()
            host = self._driver.pagelocked_empty(capacity, np.uint8)
            buffer = _Buffer(
                device=self._driver.mem_alloc(capacity),
                host=host,
                pinned=host.base,
                capacity=capacity,
            )
            self._buffers[name] = buffer
        return int(buffer.device)

    def upload(self, name: str, array: np.ndarray[Any, Any]) -> int:
        """Queue a copy of ``array`` into buffer ``name``; its device address."""
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        address = self.reserve(name, data.nbytes)
        if data.nbytes:
            buffer = self._buffers[name]
            staging = buffer.host[: data.nbytes]
            staging[...] = data
            self._driver.memcpy_htod_async(buffer.device, staging, self._stream)
        return address

    def address(self, name: str) -> int:
        return int(self._buffers[name].device)

    def download(self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        """Queue a copy of buffer ``name``, read as ``shape`` x ``dtype``, back to the host."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        buffer = self._buffers.get(name)
        if buffer is None or buffer.capacity < nbytes:
            raise ValueError(f"buffer {name!r} holds fewer than the {nbytes} bytes asked for")
        if nbytes:
            self._driver.memcpy_dtoh_async(buffer.host[:nbytes], buffer.device, self._stream)
        self._pending.append((name, shape, np.dtype(dtype), nbytes))

    def finish(self) -> dict[str, np.ndarray[Any, Any]]:
        """Wait for the stream; the arrays queued by :meth:`download`, as fresh host arrays."""
        pending, self._pending = self._pending, []
        self._stream.synchronize()
        out: dict[str, np.ndarray[Any, Any]] = {}
        for name, shape, dtype, nbytes in pending:
            staging = self._buffers[name].host[:nbytes]
            out[name] = staging.copy().view(dtype).reshape(shape)
        return out

    def discard(self) -> None:
        """Wait for queued work and forget queued downloads (after a failed call)."""
        self._pending = []
        self._stream.synchronize()

    @property
    def allocated_bytes(self) -> int:
        """Device bytes held, for tests and metrics."""
        return sum(b.capacity for b in self._buffers.values())

    def close(self) -> None:
        """Free every buffer and the stream."""
        if self._stream is None:
            return
        self._stream.synchronize()
        for buffer in self._buffers.values():
            buffer.free()
        self._buffers.clear()
        self._stream = None
