"""Listen addresses: ``host:port`` for TCP, ``unix:/path`` for a Unix socket.

Both the agent (to bind) and :class:`~edge_agent.client.EdgeClient` (to connect) read the same
strings, so a config file and a client agree on what an address means.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

__all__ = ["TcpAddress", "UnixAddress", "parse_address"]

UNIX_PREFIX = "unix:"


@dataclass(frozen=True, kw_only=True, slots=True)
class TcpAddress:
    host: str
    port: int
    """0 asks the system for a free port."""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, kw_only=True, slots=True)
class UnixAddress:
    path: Path

    def __str__(self) -> str:
        return f"{UNIX_PREFIX}{self.path}"


def parse_address(value: str) -> TcpAddress | UnixAddress:
    """``"127.0.0.1:8081"``, ``"[::1]:8081"``, ``"unix:/run/edge-agent/api.sock"`` or an absolute path.

    Raises :class:`ConfigError` naming what is wrong.
    """
    text = value.strip()
    if text.startswith(UNIX_PREFIX) or text.startswith("/"):
        path = text[len(UNIX_PREFIX) :] if text.startswith(UNIX_PREFIX) else text
        if not path:
            raise ConfigError(f"address {value!r}: the Unix socket path is empty")
        return UnixAddress(path=Path(path))
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(
            f"address {value!r} is neither host:port nor unix:/path (example: 127.0.0.1:8081)"
        )
    if host.startswith("["):
        if not host.endswith("]"):
            raise ConfigError(f"address {value!r}: an IPv6 host must be in brackets, [::1]:8081")
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"address {value!r}: write an IPv6 host in brackets, [::1]:8081")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"address {value!r}: port must be an integer from 0 to 65535")
    return TcpAddress(host=host, port=int(port_text))
