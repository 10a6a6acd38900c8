"""The hub against Triton Inference Server (and the naive server), over HTTP and gRPC.

Same models (a small MLP, 64 -> 32 -> 10, and MobileNetV2), ONNX Runtime on the CPU in every
server, the same dynamic batching settings for the hub and Triton (Triton through PyTriton,
:mod:`benchmarks.triton_peer`), concurrency 1, 4, 16 and 64. The load comes from compiled
generator ``h2load``, for HTTP/1.1 (binary OIP v2 bodies, Triton's binary extension both ways) and
for gRPC (one framed ``ModelInferRequest`` with ``raw_input_contents``, repeated), pinned to its
own cores when the machine has four or more, and counting after a second of warm-up. Each point is the median of three
rounds, the servers taking turns within a round, so the machine's drift falls on all alike. Goals: the hub's throughput at
least Triton's everywhere, its p99 no worse at concurrency 16 and 64, and gRPC at least HTTP's
throughput for MobileNetV2.

    apt-get install nghttp2-client            # h2load, the load generator
    python -m benchmarks.hub_vs_triton        # rewrites its section of RESULTS.md
    python -m benchmarks.hub_vs_triton --quick --models tiny   # a short smoke run, writes nothing
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from benchmarks.hub_batching import mobilenet_model, small_model
from benchmarks.results import write_section
from benchmarks.triton_peer import ensure_venv, peer_env
from protocols import encode_request

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 4, 16, 64)
ROUNDS = 3
"""Measurements per point, interleaved across the servers; the table shows their median."""
COMMAND = "python -m benchmarks.hub_vs_triton"
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True, kw_only=True)
class Case:
    name: str
    model: Path
    input_name: str
    example: np.ndarray
    max_batch_size: int
    max_queue_delay_us: int
    duration_s: float


@dataclass(frozen=True, kw_only=True)
class Point:
    server: str
    transport: str
    concurrency: int
    requests: int
    throughput_per_s: float
    p50_ms: float
    p99_ms: float
    load_cpu_us: float
    """The load generator's own CPU time per request (user + system): on a machine where it
    shares the servers' cores, what it takes is taken from them."""


@dataclass(frozen=True, kw_only=True)
class Cpus:
    """Which cores the servers and the load generator may use (``None``: anywhere)."""

    servers: str | None
    load: str | None
    load_threads: int

    @classmethod
    def split(cls) -> Cpus:
        count = os.cpu_count() or 1
        if count < 4 or not shutil.which("taskset"):
            return cls(servers=None, load=None, load_threads=max(1, count // 2))
        load = max(1, count // 4)
        return cls(
            servers=f"0-{count - load - 1}", load=f"{count - load}-{count - 1}", load_threads=load
        )

    def wrap(self, cores: str | None, argv: list[str]) -> list[str]:
        return ["taskset", "-c", cores, *argv] if cores else argv


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(
    url: str, process: subprocess.Popen[bytes], timeout_s: float = 300.0, data: bytes | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url, data=data, timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass(frozen=True, kw_only=True)
class Server:
    name: str
    http_port: int
    grpc_port: int | None
    metrics_url: str = ""


@contextmanager
def _hub(case: Case, workdir: Path, cpus: Cpus) -> Iterator[Server]:
    repo = workdir / "repo"
    (repo / case.name / "1").mkdir(parents=True)
    (repo / case.name / "1" / "model.onnx").symlink_to(case.model)
    config = {
        "backend": "onnxruntime",
        "max_batch_size": case.max_batch_size,
        "dynamic_batching": {"max_queue_delay_us": case.max_queue_delay_us, "max_queue_size": 4096},
    }
    (repo / case.name / "config.yaml").write_text(yaml.safe_dump(config))
    http_port, grpc_port = _free_port(), _free_port()
    argv = [
        str(Path(sys.executable).with_name("cloud-hub")),
        "serve",
        "--model-repository",
        str(repo),
        "--port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(cpus.wrap(cpus.servers, argv), stdout=subprocess.DEVNULL)
    try:
        _wait_ready(f"http://127.0.0.1:{http_port}/v2/models/{case.name}/ready", process)
        yield Server(
            name="hub",
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_url=f"http://127.0.0.1:{http_port}/metrics",
        )
    finally:
        _stop(process)


@contextmanager
def _triton(case: Case, cpus: Cpus) -> Iterator[Server]:
    python = ensure_venv()
    http_port, grpc_port, metrics_port = _free_port(), _free_port(), _free_port()
    argv = [
        str(python),
        "-m",
        "benchmarks.triton_peer",
        "--model",
        str(case.model),
        "--name",
        case.name,
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(metrics_port),
        "--max-batch-size",
        str(case.max_batch_size),
        "--max-queue-delay-us",
        str(case.max_queue_delay_us),
    ]
    process = subprocess.Popen(
        cpus.wrap(cpus.servers, argv),
        cwd=ROOT,
        env=peer_env(),
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{http_port}/v2/models/{case.name}/ready", process)
        yield Server(
            name="triton",
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        )
    finally:
        _stop(process)


@contextmanager
def _naive(case: Case, cpus: Cpus) -> Iterator[Server]:
    port = _free_port()
    argv = [sys.executable, "-m", "benchmarks.naive_server", "--model", str(case.model)]
    argv += ["--port", str(port)]
    process = subprocess.Popen(cpus.wrap(cpus.servers, argv), cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/ping", process, data=b"{}")
        yield Server(name="naive", http_port=port, grpc_port=None)
    finally:
        _stop(process)


# -- requests --------------------------------------------------------------------------------------


def http_body(case: Case) -> tuple[bytes, int]:
    encoded = encode_request({case.input_name: case.example}, binary=True, binary_outputs=True)
    assert encoded.header_length is not None
    return encoded.to_bytes(), encoded.header_length


def grpc_frame(case: Case) -> bytes:
    """One gRPC message (1-byte flag, 4-byte big-endian length, then the protobuf)."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name=case.name)
    request.inputs.add(name=case.input_name, datatype="FP32", shape=list(case.example.shape))
    request.raw_input_contents.append(np.ascontiguousarray(case.example, "<f4").tobytes())
    message = request.SerializeToString()
    return struct.pack(">BI", 0, len(message)) + message


def _check_http(server: Server, case: Case, body: bytes, header_length: int) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/v2/models/{case.name}/infer",
        data=body,
        headers={"Inference-Header-Content-Length": str(header_length)},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.status == 200, reply.status


def _failures(server: Server) -> float:
    """Failed inferences by the server's own Prometheus counters (h2load sees a gRPC error as an
    HTTP 200, its status being in the trailers)."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    series = "hub_request_failure_total" if server.name == "hub" else "nv_inference_request_failure"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if (line.startswith(series + "{") or line.startswith(series + " "))
        and 'reason="cancelled"' not in line  # calls h2load leaves in flight when it stops
    )


def _check_grpc(server: Server, case: Case) -> None:
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        tin = triton.InferInput(case.input_name, list(case.example.shape), "FP32")
        tin.set_data_from_numpy(case.example)
        result = client.infer(case.name, [tin])
        assert result.get_response().outputs, "no outputs"
    finally:
        client.close()


# -- load generators -----------------------------------------------------------------------------


def _run_load(argv: list[str]) -> tuple[str, float]:
    """A load generator's output and the CPU seconds it used (from the kernel's accounting)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out, cpu_s


WARM_UP_S = 1
"""Seconds of load before h2load starts counting. A closed-loop run opens with every client
sending at once, a burst that no steady state has: at concurrency 64, MobileNetV2's first 64
requests (6% of a 6 s run) wait for a partial first batch and up to five full ones, and set the
p99 alone. Leaving that second out, as Triton's perf_analyzer leaves out its warm-up, measures
the steady state for every server alike."""


def run_h2load(
    server: Server,
    case: Case,
    data_file: Path,
    concurrency: int,
    cpus: Cpus,
    duration_s: float,
    *,
    transport: str,
    header_length: int | None = None,
) -> Point:
    """One closed-loop measurement: HTTP/1.1 with a binary OIP body (``header_length`` its JSON
    part), or gRPC over HTTP/2 with one framed ``ModelInferRequest``; one request in flight per
    client either way."""
    log = data_file.with_suffix(f".{server.name}.{transport}.{concurrency}.log")
    log.unlink(missing_ok=True)  # h2load appends
    threads = max(1, min(concurrency, cpus.load_threads))
    seconds = max(1, round(duration_s))
    argv = [
        "h2load",
        f"--clients={concurrency}",
        f"--threads={threads}",
        "--max-concurrent-streams=1",
        f"--duration={seconds}",
        f"--warm-up-time={WARM_UP_S}",
        f"--data={data_file}",
        f"--log-file={log}",
    ]
    if transport == "http":
        argv += [
            "--h1",
            "--header=content-type: application/octet-stream",
            f"--header=inference-header-content-length: {header_length}",
            f"http://127.0.0.1:{server.http_port}/v2/models/{case.name}/infer",
        ]
    else:
        argv += [
            "--header=content-type: application/grpc",
            "--header=te: trailers",
            f"http://127.0.0.1:{server.grpc_port}{GRPC_INFER}",
        ]
    before = _failures(server) if transport == "grpc" else 0.0
    out, cpu_s = _run_load(cpus.wrap(cpus.load, argv))
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    rate = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    if done is None or rate is None:
        raise RuntimeError(f"h2load output not understood:\n{out}")
    succeeded = int(done.group(3))
    if transport == "grpc":
        # A gRPC error is an HTTP 200 with its status in the trailers: count the server's own.
        # h2load resets the calls still in flight when its time is up; the hub counts those as
        # cancelled, Triton as failed, so Triton may show up to one per client without a fault.
        failed = _failures(server) - before
        allowed = 0 if server.name == "hub" else concurrency
    else:
        # h2load counts as succeeded only the 2xx and 3xx answers (its status-code tally can
        # miss answers that straddle the warm-up's end, so it is not the test).
        failed = int(done.group(2)) - succeeded
        allowed = 0
    if failed > allowed or succeeded != int(done.group(2)) or not succeeded:
        raise RuntimeError(
            f"h2load over {transport} against {server.name}: {failed} failed inferences\n{out}"
        )
    latencies = np.sort(np.loadtxt(log, usecols=2, ndmin=1)) / 1e3
    log.unlink()
    return Point(
        server=server.name,
        transport=transport,
        concurrency=concurrency,
        requests=succeeded,
        throughput_per_s=float(rate.group(1)),
        p50_ms=float(np.percentile(latencies, 50)),
        p99_ms=float(np.percentile(latencies, 99)),
        # The warm-up is not in h2load's counts; take its share of the CPU out.
        load_cpu_us=cpu_s * seconds / (seconds + WARM_UP_S) / succeeded * 1e6,
    )


def run_case(
    case: Case, levels: tuple[int, ...], cpus: Cpus, with_naive: bool, rounds: int
) -> list[Point]:
    """All servers up at once and measured in turn, ``rounds`` times at each level, so a change
    in the machine's background load falls on all of them alike; each point is the median of
    its rounds."""
    body, header_length = http_body(case)
    frame = grpc_frame(case)
    points: list[Point] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        body_file = work / "body.bin"
        body_file.write_bytes(body)
        frame_file = work / "frame.bin"
        frame_file.write_bytes(frame)

        def http(server: Server, level: int, duration_s: float) -> Point:
            return run_h2load(
                server,
                case,
                body_file,
                level,
                cpus,
                duration_s,
                transport="http",
                header_length=header_length,
            )

        with (
            _hub(case, work, cpus) as hub,
            _triton(case, cpus) as triton,
            _naive(case, cpus) if with_naive else _nothing() as naive,
        ):
            servers = [s for s in (hub, triton, naive) if s is not None]
            for server in servers:
                _check_http(server, case, body, header_length)
                http(server, 4, 1.0)  # warm-up
                if server.grpc_port is not None:
                    _check_grpc(server, case)
            for level in levels:
                measured: dict[tuple[str, str], list[Point]] = {}
                for _ in range(rounds):
                    for server in servers:
                        one = [http(server, level, case.duration_s)]
                        if server.grpc_port is not None:
                            one.append(
                                run_h2load(
                                    server,
                                    case,
                                    frame_file,
                                    level,
                                    cpus,
                                    case.duration_s,
                                    transport="grpc",
                                )
                            )
                        for point in one:
                            measured.setdefault((server.name, point.transport), []).append(point)
                for runs in measured.values():
                    point = median_point(runs)
                    print(
                        f"  {case.name} {point.transport} c={level} {point.server}: "
                        f"{point.throughput_per_s:,.0f} req/s, p50 {point.p50_ms:.2f} ms, "
                        f"p99 {point.p99_ms:.2f} ms (rounds: "
                        + ", ".join(f"{p.throughput_per_s:,.0f}" for p in runs)
                        + f"; load generator {point.load_cpu_us:,.0f} us CPU a request)",
                        flush=True,
                    )
                    points.append(point)
    return points


def median_point(runs: list[Point]) -> Point:
    """The median of each figure over the rounds (requests: their sum)."""
    first = runs[0]
    return Point(
        server=first.server,
        transport=first.transport,
        concurrency=first.concurrency,
        requests=sum(p.requests for p in runs),
        throughput_per_s=float(np.median([p.throughput_per_s for p in runs])),
        p50_ms=float(np.median([p.p50_ms for p in runs])),
        p99_ms=float(np.median([p.p99_ms for p in runs])),
        load_cpu_us=float(np.median([p.load_cpu_us for p in runs])),
    )


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def cases(names: list[str], quick: bool) -> list[Case]:
    rng = np.random.default_rng(0)
    out = []
    if "tiny" in names:
        out.append(
            Case(
                name="mlp64",
                model=small_model(),
                input_name="x",
                example=rng.random((1, 64), np.float32),
                max_batch_size=64,
                max_queue_delay_us=100,
                duration_s=2.0 if quick else 4.0,
            )
        )
    if "mobilenetv2" in names:
        out.append(
            Case(
                name="mobilenetv2",
                model=mobilenet_model(),
                input_name="input",
                example=rng.random((1, 224, 224, 3), np.float32),
                max_batch_size=16,
                max_queue_delay_us=2000,
                duration_s=3.0 if quick else 6.0,
            )
        )
    return out


def table(points_by_case: dict[str, list[Point]], cpus: Cpus, rounds: int) -> str:
    placement = (
        f"servers on cores {cpus.servers}, load generators on cores {cpus.load}"
        if cpus.servers
        else "servers and load generators sharing every core (fewer than 4 here)"
    )
    lines = [
        "## Hub against Triton Inference Server, HTTP and gRPC",
        "",
        f"Reproduce: `apt-get install nghttp2-client && {COMMAND}` (Triton through PyTriton 0.7 in",
        "`.cache/triton-venv`, made on first use). ONNX Runtime on the CPU in every server; the hub and",
        "Triton with the same dynamic batching (MLP: up to 64, 100 us; MobileNetV2: up to 16, 2 ms).",
        f"Load from `h2load`, HTTP/1.1 and gRPC alike, after {WARM_UP_S} s of warm-up that is not counted;",
        f"{placement}.",
        f"Each figure is the median of {rounds} rounds, the servers taking turns within each round.",
        "Goals: hub throughput >= Triton's everywhere; hub p99 <= Triton's at concurrency 16 and 64.",
        "",
        "| model | transport | concurrency | hub req/s | Triton req/s | hub / Triton | naive req/s | hub p50 / p99 ms | Triton p50 / p99 ms | goal |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    notes = []
    for model, points in points_by_case.items():
        index = {(p.server, p.transport, p.concurrency): p for p in points}
        for transport in ("http", "grpc"):
            for level in sorted({p.concurrency for p in points}):
                hub = index[("hub", transport, level)]
                triton = index[("triton", transport, level)]
                naive = index.get(("naive", transport, level))
                ratio = hub.throughput_per_s / triton.throughput_per_s
                met = ratio >= 1.0 and (level < 16 or hub.p99_ms <= triton.p99_ms)
                lines.append(
                    f"| {model} | {transport} | {level} | {hub.throughput_per_s:,.0f} | "
                    f"{triton.throughput_per_s:,.0f} | {ratio:.2f}x | "
                    f"{f'{naive.throughput_per_s:,.0f}' if naive else '-'} | "
                    f"{hub.p50_ms:.1f} / {hub.p99_ms:.1f} | {triton.p50_ms:.1f} / {triton.p99_ms:.1f} | "
                    f"{'met' if met else 'MISSED'} |"
                )
        for transport, tool in (("http", "h2load --h1"), ("grpc", "h2load")):
            used = [p.load_cpu_us for p in points if p.transport == transport]
            notes.append(
                f"- {model}: {tool} itself used {np.median(used):,.0f} us of CPU per request "
                f"(median over servers and levels), on the cores the servers use."
            )
        if model == "mobilenetv2":
            for level in sorted({p.concurrency for p in points}):
                grpc = index[("hub", "grpc", level)].throughput_per_s
                http = index[("hub", "http", level)].throughput_per_s
                notes.append(
                    f"- mobilenetv2, concurrency {level}: hub gRPC {grpc:,.0f} req/s against HTTP "
                    f"{http:,.0f} ({grpc / http:.2f}x; goal >= 1)."
                )
    return "\n".join([*lines, "", *notes]).rstrip() + "\n"


def run(
    quick: bool = False,
    models: list[str] | None = None,
    with_naive: bool = True,
    levels: tuple[int, ...] | None = None,
    rounds: int | None = None,
) -> str:
    if shutil.which("h2load") is None:
        message = "hub_vs_triton not run: h2load is missing (apt-get install nghttp2-client)"
        print(message)
        return message
    levels = levels or ((1, 16) if quick else CONCURRENCY)
    cpus = Cpus.split()
    results = {}
    for case in cases(models or ["tiny", "mobilenetv2"], quick):
        results[case.name] = run_case(
            case, levels, cpus, with_naive, rounds or (1 if quick else ROUNDS)
        )
    text = table(results, cpus, rounds or (1 if quick else ROUNDS))
    if not quick and levels == CONCURRENCY:
        write_section("hub_vs_triton", text)
    print(text)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run that writes nothing")
    parser.add_argument(
        "--models", nargs="+", choices=["tiny", "mobilenetv2"], help="default: both"
    )
    parser.add_argument("--no-naive", action="store_true", help="leave the naive server out")
    parser.add_argument("--levels", nargs="+", type=int, help=f"default: {CONCURRENCY}")
    parser.add_argument("--rounds", type=int, help=f"measurements per point (default {ROUNDS})")
    args = parser.parse_args()
    run(
        quick=args.quick,
        models=args.models,
        with_naive=not args.no_naive,
        levels=tuple(args.levels) if args.levels else None,
        rounds=args.rounds,
    )
