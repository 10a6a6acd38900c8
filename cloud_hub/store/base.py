"""The store's interface: :class:`ObjectStore`, what every implementation provides, and the
key rules they share. See the package docstring for the guarantees."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import StoreError, StoreObjectMissingError

__all__ = [
    "CHUNK_BYTES",
    "ObjectInfo",
    "ObjectStore",
    "StoreError",
    "StoreObjectMissingError",
    "check_key",
]

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, kw_only=True)
class ObjectInfo:
    key: str
    size_bytes: int
    modified_s: float
    """Seconds since the epoch, as the store records it."""


def check_key(key: str) -> str:
    """``key`` when every part is a plain name; :class:`ValueError` otherwise."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
        raise ValueError(f"not a store key: {key!r}")
    return key


class ObjectStore(abc.ABC):
    """Blocking calls: the hub runs them in threads (``asyncio.to_thread``)."""

    description: str
    """Where the store is, for logs and errors (never credentials)."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """The object's size and time, or ``None`` when there is none."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object; :class:`StoreObjectMissingError` when absent."""

    @abc.abstractmethod
    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``[start, end)`` in chunks (a Range download). The object is opened before the
        first chunk is asked for, so a missing one fails at the call."""

    @abc.abstractmethod
    def download(self, key: str, path: Path) -> None:
        """Copy the object to a local file."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write the object whole, replacing any before it; readers see old or new."""

    @abc.abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """:meth:`put` of a local file's content, streamed (large models)."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write the object only if the key holds nothing; ``False`` when it did. Of writers
        racing on one key, exactly one gets ``True``."""

    @abc.abstractmethod
    def copy(self, source: str, target: str) -> None:
        """Copy an object within the store (server side where the store can)."""

    @abc.abstractmethod
    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a folder: end it with ``/``)."""

    @abc.abstractmethod
    def children(self, prefix: str) -> list[str]:
        """The names of the folders directly under ``prefix`` (``""`` or ending in ``/``)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; nothing when it is absent."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under ``prefix`` (ending in ``/``)."""
        for info in self.list_objects(prefix):
            self.delete(info.key)

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def close(self) -> None:  # noqa: B027 - most stores hold nothing to release
        """Release connections."""
