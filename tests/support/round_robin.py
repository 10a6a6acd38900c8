"""A round-robin TCP proxy on loopback: a load balancer in front of hub replicas, for tests.

Connection ``i`` goes to ``targets[i % len(targets)]`` (urllib opens one connection per request,
so successive requests reach successive replicas). Each connection is recorded with the replica
it reached and the head of its first request. ``cut_response`` arms a one-off fault: the next
connection whose request contains a marker gets only the first bytes of its answer, then is cut,
as a link that drops mid-download.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field

from tests.support.broker import free_port


@dataclass
class Routed:
    target: int
    request_head: str


@dataclass
class RoundRobinProxy:
    targets: list[tuple[str, int]]
    port: int = field(default_factory=free_port)
    routed: list[Routed] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._next = 0
        self._cut: tuple[str, int] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def cut_response(self, marker: str, after_bytes: int) -> None:
        """Cut the next answer to a request containing ``marker`` after ``after_bytes``."""
        with self._lock:
            self._cut = (marker, after_bytes)

    def requests(self, marker: str) -> list[Routed]:
        with self._lock:
            return [r for r in self.routed if marker in r.request_head]

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(65536)
        if not first:
            writer.close()
            return
        head = first.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        with self._lock:
            index = self._next % len(self.targets)
            self._next += 1
            self.routed.append(Routed(target=index, request_head=head))
            limit = None
            if self._cut is not None and self._cut[0] in head:
                limit, self._cut = self._cut[1], None
        host, port = self.targets[index]
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        up_writer.write(first)
        upstream = asyncio.ensure_future(_pipe(reader, up_writer, None))
        downstream = asyncio.ensure_future(_pipe(up_reader, writer, limit))
        await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        for task in (upstream, downstream):
            task.cancel()
        for w in (writer, up_writer):
            with contextlib.suppress(Exception):
                w.close()


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int | None
) -> None:
    sent = 0
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            return
        if limit is not None:
            chunk = chunk[: limit - sent]
        writer.write(chunk)
        await writer.drain()
        sent += len(chunk)
        if limit is not None and sent >= limit:
            return
