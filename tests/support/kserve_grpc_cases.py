"""The hub's inference cases through KServe's own gRPC client, ``kserve.InferenceGRPCClient``.

Run by ``tests/integration/test_hub_kserve.py`` with the interpreter of a separate virtual
environment holding the ``kserve`` package (its pins, protobuf < 7 among them, clash with the
project's), so this file imports only what that environment has. It prints one JSON object:
what each case got, for the test to compare with what the models compute.

    python tests/support/kserve_grpc_cases.py 127.0.0.1:8001
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest


def _request(model: str, request_id: str, **arrays: tuple[np.ndarray, str]) -> InferRequest:
    inputs = []
    for name, (array, datatype) in arrays.items():
        tensor = InferInput(name=name, shape=list(array.shape), datatype=datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    return InferRequest(model_name=model, infer_inputs=inputs, request_id=request_id)


def _outputs(response: Any) -> dict[str, Any]:
    return {
        o.name: {"datatype": o.datatype, "shape": list(o.shape), "data": _plain(o.as_numpy())}
        for o in response.outputs
    }


def _plain(array: np.ndarray) -> list[Any]:
    if array.dtype == object:
        return [e.decode() if isinstance(e, bytes) else str(e) for e in array.reshape(-1)]
    return array.reshape(-1).astype(np.float64 if array.dtype.kind == "f" else np.int64).tolist()


async def main(url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with InferenceGRPCClient(url, timeout=30) as client:
        out["live"] = await client.is_server_live()
        out["ready"] = await client.is_server_ready()
        out["model_ready"] = await client.is_model_ready("add_sub")
        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        b = np.full((3, 4), 0.5, np.float32)
        response = await client.infer(
            _request("add_sub", "k-1", INPUT0=(a, "FP32"), INPUT1=(b, "FP32"))
        )
        out["add_sub"] = {"id": response.id, "outputs": _outputs(response)}
        x = np.array([[0.5, -1.25, 3.0]], np.float16)
        out["fp16"] = _outputs(await client.infer(_request("fp16", "k-2", x=(x, "FP16"))))
        big = np.array([[2**40, -5, 7]], np.int64)
        out["int64"] = _outputs(
            await client.infer(_request("int64", "k-3", a=(big, "INT64"), b=(big, "INT64")))
        )
        text = np.array([["héllo".encode(), b"tensor"]], dtype=object)
        out["bytes"] = _outputs(
            await client.infer(_request("strings", "k-4", text=(text, "BYTES")))
        )
        answers = await asyncio.gather(
            *(
                client.infer(
                    _request(
                        "add_sub",
                        f"c-{i}",
                        INPUT0=(np.full((1, 4), i, np.float32), "FP32"),
                        INPUT1=(np.full((1, 4), i, np.float32), "FP32"),
                    )
                )
                for i in range(32)
            )
        )
        out["concurrent"] = {r.id: _outputs(r)["OUTPUT0"]["data"] for r in answers}
        errors = {}
        for case, request in {
            "unknown model": _request("nope", "e-1", x=(a, "FP32")),
            "wrong shape": _request(
                "add_sub", "e-2", INPUT0=(a[:, :3], "FP32"), INPUT1=(b[:, :3], "FP32")
            ),
        }.items():
            try:
                await client.infer(request)
                errors[case] = "OK"
            except grpc.RpcError as exc:
                errors[case] = {"code": exc.code().name, "details": exc.details()}
        out["errors"] = errors
        out["after_errors"] = _outputs(
            await client.infer(_request("add_sub", "k-5", INPUT0=(a, "FP32"), INPUT1=(b, "FP32")))
        )["OUTPUT1"]["data"]
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
