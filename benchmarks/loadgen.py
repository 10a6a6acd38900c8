"""A closed-loop HTTP load generator light enough to share two cores with the server it loads.

Each of ``concurrency`` asyncio connections sends the same pre-encoded request, waits for the
answer, and sends again. Parsing is minimal (status line, Content-Length), so the generator
costs far less per request than any server under test.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    latencies_s: list[float]

    @property
    def throughput_per_s(self) -> float:
        return self.requests / self.duration_s

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_s) * 1e3 if self.latencies_s else float("nan")

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(0.99)


def build_request(
    host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _connection(
    host: str,
    port: int,
    request: bytes,
    stop_at: float,
    warm_until: float,
    latencies: list[float],
    counts: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            start = time.perf_counter()
            if start >= stop_at:
                return
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            end = time.perf_counter()
            if start >= warm_until:
                if status_line.split(b" ", 2)[1] == b"200":
                    latencies.append(end - start)
                    counts[0] += 1
                else:
                    counts[1] += 1
    finally:
        writer.close()


async def _run(
    host: str, port: int, request: bytes, concurrency: int, duration_s: float, warmup_s: float
) -> LoadResult:
    latencies: list[float] = []
    counts = [0, 0]
    now = time.perf_counter()
    warm_until = now + warmup_s
    stop_at = warm_until + duration_s
    await asyncio.gather(
        *(
            _connection(host, port, request, stop_at, warm_until, latencies, counts)
            for _ in range(concurrency)
        )
    )
    return LoadResult(
        concurrency=concurrency,
        requests=counts[0],
        errors=counts[1],
        duration_s=duration_s,
        latencies_s=latencies,
    )


def run_load(
    host: str,
    port: int,
    request: bytes,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
) -> LoadResult:
    return asyncio.run(_run(host, port, request, concurrency, duration_s, warmup_s))
