"""The local HTTP API: Open Inference Protocol v2 over the standard library's HTTP server.

routes.py          paths and methods
handler.py         one request: decode, route, encode, answer
classification.py  Triton's classification extension (labels)
server.py          the listening socket: TCP or Unix
"""

from .handler import EXTENSIONS, ApiContext, ApiHandler
from .server import ApiServer

__all__ = ["EXTENSIONS", "ApiContext", "ApiHandler", "ApiServer"]
