"""The MQTT bridge's record of recent requests: repeats answered from it, runs in progress joined.

A request is named by its device, its id **and a digest of its payload**, so a repeated id with
other content is a different request and never gets another request's answer (two apps on one
device with the same ids, a counter that restarted). A repeat with the same bytes (a QoS 1
redelivery, a device retrying after a lost answer):

- while the first run is in progress, joins it and gets its answer (one execution);
- once answered, gets the recorded answer, if the answer was *final*.

Only final outcomes are recorded: what the model computed, and errors that cannot change on
retry (400, 404, 413). Overload and failures (429, 500, 503, expiry) answer the requests waiting
on that run, then the entry is dropped, so a retry runs again.

The record is a cache of one hub process, bounded by age (``ttl_s``, monotonic clock), entries
and bytes (answer sizes plus a fixed per-entry overhead); the oldest entries go first.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["ENTRY_OVERHEAD_BYTES", "FINAL_ERROR_STATUSES", "Entry", "RecentAnswers", "digest"]

ENTRY_OVERHEAD_BYTES = 480
"""Measured memory of one entry besides its answer and key strings (dict slot, key tuple,
digest, entry object, the answer's ``bytes`` header): tests/unit/cloud_hub/test_answers.py."""

FINAL_ERROR_STATUSES = frozenset({400, 404, 413})
"""Error statuses that a retry of the same bytes would get again."""

EvictionReason = Literal["ttl", "bytes", "entries"]


def digest(payload: bytes) -> bytes:
    """The content part of a request's identity: BLAKE2b-128 of the payload as sent."""
    return hashlib.blake2b(payload, digest_size=16).digest()


@dataclass(eq=False, slots=True)
class Entry:
    """One request seen recently: its run in progress (``answer is None``), or its answer."""

    created_s: float
    size: int
    answer: bytes | None = None
    running: asyncio.Future[bytes] | None = field(default=None)


Key = tuple[str, str, bytes]


class RecentAnswers:
    def __init__(
        self,
        *,
        max_bytes: int,
        ttl_s: float,
        max_entries: int | None = None,
        on_evict: collections.abc.Callable[[EvictionReason], None] | None = None,
    ) -> None:
        self._entries: collections.OrderedDict[Key, Entry] = collections.OrderedDict()
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._bytes = 0
        self._on_evict = on_evict

    @property
    def size_bytes(self) -> int:
        """What the record holds now, in bytes (answers plus per-entry overhead)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def claim(self, key: Key) -> tuple[bool, Entry]:
        """``(True, entry)`` for a request not seen (run it, then :meth:`settle`); else
        ``(False, entry)`` whose ``answer`` is recorded or whose ``running`` future will have it."""
        now = time.monotonic()
        self._evict(now)
        entry = self._entries.get(key)
        if entry is not None:
            return False, entry
        entry = Entry(
            created_s=now,
            size=_key_size(key),
            running=asyncio.get_running_loop().create_future(),
        )
        self._entries[key] = entry
        self._bytes += entry.size
        self._evict(now)
        return True, entry

    def settle(self, key: Key, entry: Entry, payload: bytes, *, final: bool) -> None:
        """Give ``payload`` to the requests that joined the run; keep it when ``final``."""
        running, entry.running = entry.running, None
        if running is not None and not running.done():
            running.set_result(payload)
        if self._entries.get(key) is not entry:
            return  # evicted while it ran
        if not final:
            self._drop(key, entry)
            return
        entry.answer = payload
        entry.size += len(payload)
        self._bytes += len(payload)
        self._evict(time.monotonic())

    def abandon(self, key: Key, entry: Entry, error: BaseException) -> None:
        """The run produced no answer (it expired): joiners get ``error``; a retry runs again."""
        running, entry.running = entry.running, None
        if running is not None and not running.done():
            running.set_exception(error)
            running.exception()  # retrieved: nobody may be waiting on it
        if self._entries.get(key) is entry:
            self._drop(key, entry)

    def _drop(self, key: Key, entry: Entry) -> None:
        del self._entries[key]
        self._bytes -= entry.size

    def _evict(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if now - entry.created_s >= self._ttl_s:
                reason: EvictionReason = "ttl"
            elif self._bytes > self._max_bytes:
                reason = "bytes"
            elif self._max_entries is not None and len(entries) > self._max_entries:
                reason = "entries"
            else:
                return
            self._drop(key, entry)
            if self._on_evict is not None:
                self._on_evict(reason)


def _key_size(key: Key) -> int:
    device, request_id, _ = key
    return ENTRY_OVERHEAD_BYTES + len(device) + len(request_id)
