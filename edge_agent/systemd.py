"""``sd_notify`` without libsystemd: tells a ``Type=notify`` unit when the agent is ready and when
it starts draining, so ``systemctl start`` returns only once models are loaded."""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify"]

logger = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


def notify(message: str) -> bool:
    """Send ``message`` (``"READY=1"``, ``"STOPPING=1"``...) to systemd; ``False`` outside systemd."""
    address = os.environ.get(NOTIFY_SOCKET_ENV)
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        logger.warning("cannot notify systemd (%s): %s", address, exc)
        return False
    return True
