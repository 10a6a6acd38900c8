"""The local HTTP API: Open Inference Protocol v2 over the standard library's HTTP server.

routes.py    paths and methods
handler.py   one request: decode, route, encode, answer
answers.py   an answer in the form its app asked for (classification, binary or JSON)
queued.py    the 202 of a queued request, and its answer fetched later
server.py    the listening socket: TCP or Unix
"""

from .handler import EXTENSIONS, ApiContext, ApiHandler
from .server import ApiServer

__all__ = ["EXTENSIONS", "ApiContext", "ApiHandler", "ApiServer"]
