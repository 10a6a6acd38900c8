"""The hub against a naive per-request FastAPI + ONNX Runtime server, same model, same machine.

For a small MLP (64 -> 32 -> 10) and MobileNetV2 (Keras, ``weights=None``, exported to ONNX with
tf2onnx), at concurrency 1, 4, 16 and 64, both servers get the same OIP v2 request bytes from a
light closed-loop load generator; a constant FastAPI endpoint shows the HTTP ceiling. Goal: at
concurrency 16 and above, at least 2x the naive server's throughput with a p99 no worse.

    python -m benchmarks.hub_batching [--quick]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from benchmarks.loadgen import LoadResult, build_request, run_load
from benchmarks.results import write_section
from protocols import encode_request

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench-models"
CONCURRENCY = (1, 4, 16, 64)
COMMAND = "python -m benchmarks.hub_batching"


@dataclass(frozen=True, kw_only=True)
class Case:
    name: str
    model: Path
    input_name: str
    example: np.ndarray
    binary: bool
    max_batch_size: int
    max_queue_delay_us: int
    duration_s: float


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(port: int, process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"no server on port {port}")


def small_model() -> Path:
    from tests.support.onnx_models import classifier

    path = CACHE / "mlp64.onnx"
    if not path.exists():
        classifier(path)
    return path


def mobilenet_model() -> Path:
    path = CACHE / "mobilenetv2.onnx"
    if path.exists():
        return path
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tf2onnx

    model = tf.keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    spec = (tf.TensorSpec((None, 224, 224, 3), tf.float32, name="input"),)

    @tf.function(input_signature=spec)  # type: ignore[misc]
    def forward(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    CACHE.mkdir(parents=True, exist_ok=True)
    tf2onnx.convert.from_function(forward, input_signature=spec, opset=17, output_path=str(path))
    return path


def _serve_hub(case: Case, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    repo = workdir / "repo"
    folder = repo / case.name / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").symlink_to(case.model)
    config = {
        "backend": "onnxruntime",
        "max_batch_size": case.max_batch_size,
        "dynamic_batching": {"max_queue_delay_us": case.max_queue_delay_us, "max_queue_size": 4096},
    }
    (repo / case.name / "config.yaml").write_text(yaml.safe_dump(config))
    port = _free_port()
    hub = Path(sys.executable).with_name("cloud-hub")
    process = subprocess.Popen(
        [
            str(hub),
            "serve",
            "--model-repository",
            str(repo),
            "--port",
            str(port),
            "--grpc-port",
            "off",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait(port, process)
    time.sleep(1.0)  # the model loads after the port opens
    return process, port


def _serve_naive(case: Case) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.naive_server",
            "--model",
            str(case.model),
            "--port",
            str(port),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait(port, process)
    return process, port


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def _measure(
    port: int, path: str, body: bytes, headers: dict[str, str], case: Case, levels: tuple[int, ...]
) -> list[LoadResult]:
    request = build_request("127.0.0.1", port, path, body, headers)
    results = []
    for concurrency in levels:
        result = run_load(
            "127.0.0.1", port, request, concurrency=concurrency, duration_s=case.duration_s
        )
        if result.errors or not result.requests:
            raise RuntimeError(
                f"{result.errors} errors at concurrency {concurrency} on port {port}"
            )
        results.append(result)
    return results


def backend_ceiling(case: Case, seconds: float = 3.0) -> float:
    """Items per second ONNX Runtime alone reaches on full batches, with the hub's settings: no
    server can beat it on this machine."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(case.model), options, providers=["CPUExecutionProvider"])
    batch = np.repeat(case.example, case.max_batch_size, axis=0)
    session.run(None, {case.input_name: batch})
    runs = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {case.input_name: batch})
        runs += 1
    return runs * case.max_batch_size / (time.perf_counter() - start)


def run_case(
    case: Case, levels: tuple[int, ...]
) -> tuple[list[LoadResult], list[LoadResult], list[LoadResult] | None]:
    """Both servers up at once, measured in turn at each level, so a change in the machine's
    background load falls on both alike."""
    encoded = encode_request(
        {case.input_name: case.example}, binary=case.binary, binary_outputs=case.binary
    )
    body = encoded.to_bytes()
    headers = {"Content-Type": "application/octet-stream" if case.binary else "application/json"}
    if encoded.header_length is not None:
        headers["Inference-Header-Content-Length"] = str(encoded.header_length)
    path = f"/v2/models/{case.name}/infer"
    hub_results: list[LoadResult] = []
    naive_results: list[LoadResult] = []
    ceiling: list[LoadResult] | None = None if case.binary else []
    with tempfile.TemporaryDirectory() as tmp:
        hub, hub_port = _serve_hub(case, Path(tmp))
        naive, naive_port = _serve_naive(case)
        try:
            for level in levels:
                hub_results += _measure(hub_port, path, body, headers, case, (level,))
                naive_results += _measure(naive_port, path, body, headers, case, (level,))
                if ceiling is not None:
                    ceiling += _measure(naive_port, "/ping", b"{}", {}, case, (level,))
        finally:
            _stop(hub)
            _stop(naive)
    return hub_results, naive_results, ceiling


def run(quick: bool = False) -> str:
    rng = np.random.default_rng(0)
    levels = (1, 16) if quick else CONCURRENCY
    cases = [
        Case(
            name="mlp64",
            model=small_model(),
            input_name="x",
            example=rng.random((1, 64), np.float32),
            binary=False,
            max_batch_size=64,
            max_queue_delay_us=100,
            duration_s=1.5 if quick else 4.0,
        ),
        Case(
            name="mobilenetv2",
            model=mobilenet_model(),
            input_name="input",
            example=rng.random((1, 224, 224, 3), np.float32),
            binary=True,
            max_batch_size=16,
            max_queue_delay_us=2000,
            duration_s=3.0 if quick else 8.0,
        ),
    ]
    lines = [
        "## Hub: dynamic batching against a naive per-request server",
        "",
        f"Reproduce: `{COMMAND}`. Both servers run ONNX Runtime on the CPU in one process and read",
        "the same OIP v2 bytes (the small model as JSON, MobileNetV2 binary) from a closed-loop",
        "generator on the same 2 cores. Goal: at concurrency >= 16, throughput >= 2x the naive",
        "server's with p99 no worse.",
        "",
        "| model | concurrency | hub req/s | naive req/s | ratio | hub p50 / p99 ms | naive p50 / p99 ms | HTTP ceiling req/s | goal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    notes = []
    for case in cases:
        hub, naive, ceiling = run_case(case, levels)
        peak = backend_ceiling(case)
        best_naive = max(n.throughput_per_s for n in naive)
        notes.append(
            f"- {case.name}: ONNX Runtime alone, in batches of {case.max_batch_size}, runs "
            f"{peak:,.0f} items/s here, {peak / best_naive:.2f}x the naive server's best; no "
            "server can do better than that ratio on this machine."
        )
        for i, (h, n) in enumerate(zip(hub, naive, strict=True)):
            ratio = h.throughput_per_s / n.throughput_per_s
            verdict = ""
            if h.concurrency >= 16:
                met = ratio >= 2.0 and h.p99_ms <= n.p99_ms
                verdict = "met" if met else "MISSED"
            ceil = f"{ceiling[i].throughput_per_s:,.0f}" if ceiling else "-"
            lines.append(
                f"| {case.name} | {h.concurrency} | {h.throughput_per_s:,.0f} | {n.throughput_per_s:,.0f} | "
                f"{ratio:.2f}x | {h.p50_ms:.1f} / {h.p99_ms:.1f} | {n.p50_ms:.1f} / {n.p99_ms:.1f} | {ceil} | {verdict} |"
            )
    lines += ["", *notes]
    table = "\n".join(lines)
    if not quick:
        write_section("hub_batching", table)
    print(table)
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a short run that writes nothing")
    run(quick=parser.parse_args().quick)
