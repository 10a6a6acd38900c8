"""A TCP proxy on loopback that makes a link slow or lossy, for fault-injection tests.

Put it between a client and a server (agent and broker): every chunk read from either side waits
``delay_s`` (plus up to ``jitter_s``) before it is written on, in order, and with probability
``drop_p`` a chunk is not passed on but the connection is cut instead, both ways, as a link that
loses packets does to a TCP connection after its retransmissions give up. ``cut_all`` cuts every
open connection at once. Settings may change while it runs. It runs an asyncio loop in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from dataclasses import dataclass, field

from tests.support.broker import free_port


@dataclass
class ProxyStats:
    connections: int = 0
    cut: int = 0
    chunks: int = 0
    bytes: int = 0


@dataclass
class LossyProxy:
    """Listens on ``127.0.0.1:port`` and forwards to ``target_host:target_port``."""

    target_host: str
    target_port: int
    delay_s: float = 0.0
    jitter_s: float = 0.0
    drop_p: float = 0.0
    seed: int = 0
    port: int = field(default_factory=free_port)
    stats: ProxyStats = field(default_factory=ProxyStats)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def cut_all(self) -> int:
        """Cut every open connection now; the number cut."""
        return asyncio.run_coroutine_threadsafe(self._cut_all(), self._loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut_all()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    async def _cut_all(self) -> int:
        writers = list(self._writers)
        for writer in writers:
            writer.transport.abort()
        self._writers.clear()
        return len(writers) // 2

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        self.stats.connections += 1
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        self._writers.update((client_w, server_w))
        cut = asyncio.Event()
        await asyncio.gather(
            self._pipe(client_r, server_w, cut, (client_w, server_w)),
            self._pipe(server_r, client_w, cut, (client_w, server_w)),
        )
        self._writers.difference_update((client_w, server_w))

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        cut: asyncio.Event,
        both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        """Forward chunks, each after its delay; the writes keep their order because each is
        scheduled at a monotonic time no earlier than the one before."""
        pending: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def deliver() -> None:
            while (item := await pending.get()) is not None:
                due, chunk = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if cut.is_set():
                    return
                try:
                    writer.write(chunk)
                    await writer.drain()
                except (ConnectionError, RuntimeError):
                    break
            if not cut.is_set():
                with contextlib.suppress(OSError, RuntimeError):
                    writer.write_eof()

        delivering = asyncio.ensure_future(deliver())
        last_due = 0.0
        try:
            while not cut.is_set():
                try:
                    chunk = await reader.read(65536)
                except (ConnectionError, OSError):
                    break
                if not chunk:
                    break
                if self.drop_p and self._random.random() < self.drop_p:
                    self.stats.cut += 1
                    cut.set()
                    for w in both:
                        w.transport.abort()
                    break
                self.stats.chunks += 1
                self.stats.bytes += len(chunk)
                delay = self.delay_s + (
                    self._random.random() * self.jitter_s if self.jitter_s else 0
                )
                last_due = max(last_due, time.monotonic() + delay)
                pending.put_nowait((last_due, chunk))
        finally:
            pending.put_nowait(None)
            await delivering
            if cut.is_set():
                for w in both:
                    w.transport.abort()
