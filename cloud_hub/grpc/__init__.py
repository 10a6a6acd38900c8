"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``, Triton's flavour).

    server.py    GrpcListener: grpc.aio server on the hub's event loop, TLS credentials
    service.py   InferenceServicer: each RPC -> access check -> InferenceService / repository
    codec.py     ModelInferRequest <-> typed values and arrays (raw and typed contents)

The message and service definitions are the generated stubs that ``tritonclient[grpc]`` ships
(``tritonclient.grpc.service_pb2``), so the hub speaks exactly what Triton's clients send.
"""

from __future__ import annotations

from .server import GrpcListener

__all__ = ["GrpcListener"]
