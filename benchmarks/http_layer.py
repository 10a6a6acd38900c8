"""The local API's HTTP/1.1 parsing: the standard library's (what the agent uses) against h11
(the candidate library), per request: parse a keep-alive POST with its headers and a small
body, and write a small JSON answer. Also the installed size of h11. Prints a table; the
choice it informed is in docs/edge-agent.md."""

from __future__ import annotations

import io
from email.message import Message
from http.server import BaseHTTPRequestHandler
from importlib import metadata
from typing import Any

from .results import machine, median_seconds

BODY = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}'
REQUEST = (
    b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: bench\r\n"
    b"Accept: */*\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
    + BODY
)
ANSWER = b'{"model_name":"m","outputs":[]}'


class _Parse(BaseHTTPRequestHandler):
    """The standard library's request parsing alone, over an in-memory stream."""

    def __init__(self, raw: bytes) -> None:  # no socket: parse only
        self.rfile = io.BytesIO(raw)
        self.wfile = io.BytesIO()
        self.client_address = ("127.0.0.1", 0)
        self.request_version = "HTTP/1.1"


def _stdlib() -> Any:
    handler = _Parse(REQUEST)
    handler.raw_requestline = handler.rfile.readline(65537)
    assert handler.parse_request()
    headers: Message = handler.headers
    body = handler.rfile.read(int(headers["Content-Length"]))
    head = (
        "HTTP/1.1 200 OK\r\nServer: edge-agent\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(ANSWER)}\r\n\r\n"
    ).encode("latin-1")
    return body, head + ANSWER


def _h11() -> Any:
    import h11

    conn = h11.Connection(h11.SERVER)
    conn.receive_data(REQUEST)
    request = conn.next_event()
    data = conn.next_event()
    end = conn.next_event()
    assert isinstance(request, h11.Request)
    assert isinstance(end, h11.EndOfMessage)
    out = conn.send(
        h11.Response(
            status_code=200,
            headers=[
                ("Server", "edge-agent"),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(ANSWER))),
            ],
        )
    )
    out += conn.send(h11.Data(data=ANSWER)) + conn.send(h11.EndOfMessage())
    return data.data, out


def _installed_kib(name: str) -> float:
    files = metadata.distribution(name).files or ()
    return sum(f.locate().stat().st_size for f in files if f.locate().is_file()) / 1024


def run() -> str:
    assert _stdlib()[0] == _h11()[0] == BODY
    stdlib_s = median_seconds(_stdlib)
    h11_s = median_seconds(_h11)

    text = (
        f"{machine()}\n"
        f"| parser | µs per request (parse + answer) |\n|---|---|\n"
        f"| http.server (standard library) | {stdlib_s * 1e6:.1f} |\n"
        f"| h11 {metadata.version('h11')} | {h11_s * 1e6:.1f} |\n"
        f"h11 installed: {_installed_kib('h11'):.0f} KiB (pure Python, no dependencies)\n"
    )
    print(text)
    return text


if __name__ == "__main__":
    run()
