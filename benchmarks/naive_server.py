"""The baseline: the per-request FastAPI + ONNX Runtime server most tutorials show.

One ``session.run`` per request on FastAPI's thread pool (what a plain ``def`` endpoint does),
no batching, no queue. It reads and writes the same OIP v2 bodies as the hub through the same
codec, so the comparison isolates how requests are served rather than the wire format. ``/ping``
answers a constant: the HTTP ceiling of FastAPI on this machine.

    python -m benchmarks.naive_server --model model.onnx --port 8001
"""

from __future__ import annotations

import argparse
from typing import Any

import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from protocols import HEADER_LENGTH_HEADER, decode_request, encode_response, wants_binary_output


def create_app(model_path: str) -> FastAPI:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]
    app = FastAPI()

    def handle(model: str, body: bytes, header_length: str | None) -> tuple[bytes, dict[str, str]]:
        decoded = decode_request(body, header_length)
        outputs: dict[str, Any] = dict(
            zip(output_names, session.run(output_names, decoded.tensors), strict=True)
        )
        request = decoded.request
        encoded = encode_response(
            outputs,
            model_name=model,
            id=request.id,
            binary={name: wants_binary_output(request, name) for name in outputs},
        )
        headers = (
            {}
            if encoded.header_length is None
            else {HEADER_LENGTH_HEADER: str(encoded.header_length)}
        )
        return encoded.to_bytes(), headers

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> Response:
        body = await request.body()
        content, headers = await run_in_threadpool(
            handle, model, body, request.headers.get(HEADER_LENGTH_HEADER)
        )
        return Response(content, headers=headers, media_type="application/octet-stream")

    @app.post("/ping")
    async def ping() -> Response:
        return Response(b'{"ok":true}', media_type="application/json")

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.model),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )
