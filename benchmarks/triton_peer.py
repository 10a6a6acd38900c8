"""Triton as the benchmark peer: one ONNX model served by Triton Inference Server through PyTriton.

Triton's HTTP and gRPC front ends and its dynamic batcher, with ONNX Runtime on the CPU behind
PyTriton's Python backend, the same runtime the hub uses. It runs in its own virtual environment
(PyTriton pins numpy below 2; see :func:`ensure_venv`), so this file imports nothing of ours.

    python -m benchmarks.triton_peer --model m.onnx --name m --http-port 8100 --grpc-port 8101 \\
        --max-batch-size 64 --max-queue-delay-us 100
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".cache" / "triton-venv"
REQUIREMENTS = ["nvidia-pytriton==0.7.0", "onnxruntime", "numpy<2"]


def ensure_venv() -> Path:
    """The peer's interpreter, creating its virtual environment on first use (PyTriton's wheel
    ships Triton Inference Server itself: a few hundred MB, once)."""
    python = VENV / "bin" / "python"
    marker = VENV / ".installed"
    if not marker.exists():
        base = Path(getattr(sys, "_base_executable", sys.executable))
        subprocess.run([str(base), "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
        marker.write_text("\n".join(REQUIREMENTS) + "\n")
    return python


def peer_env() -> dict[str, str]:
    """Triton's Python backend stub links against libpython; without the interpreter's own
    lib/ folder first it picks up the system's, which may be another build and fail to start."""
    libdir = sysconfig.get_config_var("LIBDIR") or str(Path(sys.base_prefix) / "lib")
    previous = os.environ.get("LD_LIBRARY_PATH")
    return {**os.environ, "LD_LIBRARY_PATH": libdir + (f":{previous}" if previous else "")}


def serve(args: argparse.Namespace) -> None:
    import numpy as np
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    outputs = session.get_outputs()
    numpy_of = {"tensor(float)": np.float32, "tensor(int64)": np.int64}

    @batch  # type: ignore[misc]
    def infer(**arrays: np.ndarray) -> dict[str, np.ndarray]:
        results = session.run([o.name for o in outputs], arrays)
        return {o.name: r for o, r in zip(outputs, results, strict=True)}

    config = TritonConfig(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=args.name,
            infer_func=infer,
            inputs=[
                Tensor(name=i.name, dtype=numpy_of[i.type], shape=tuple(i.shape[1:]))
                for i in inputs
            ],
            outputs=[
                Tensor(name=o.name, dtype=numpy_of[o.type], shape=tuple(o.shape[1:]))
                for o in outputs
            ],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-us", type=int, default=100)
    serve(parser.parse_args())
