"""Giving memory back to the system after a large request.

glibc keeps freed blocks in its heaps: after a 64 MB request the agent's resident size stays
hundreds of MB up although Python freed everything. ``malloc_trim(0)`` returns the free pages
at once; elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from collections.abc import Callable

__all__ = ["LARGE_REQUEST_BYTES", "release_free_memory"]

logger = logging.getLogger(__name__)

LARGE_REQUEST_BYTES = 8 * 1024 * 1024
"""Requests at least this large are followed by :func:`release_free_memory`."""


def _load_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _load_trim()


def release_free_memory() -> None:
    """Return the C heap's free pages to the system (glibc only)."""
    if _TRIM is not None:
        _TRIM(0)
