"""TLS for the hub's listeners, with certificates reloaded from disk while serving.

Both listeners look at the files again (at most every ``tls.reload_check_s``) when a client
connects; when they changed and load cleanly, new handshakes use them, and connections already
open keep theirs, so a renewal (cert-manager rewriting a Secret, a cron job running certbot)
drops nothing. Files that fail to load (a key that does not match its certificate, a file
half-written) leave the previous ones in use and are tried again at the next check.

HTTP: the ``ssl.SSLContext`` uvicorn serves with swaps, in its SNI callback (which OpenSSL calls
for every handshake, with or without SNI), to a context built from the new files. gRPC: the
certificate fetcher of ``grpc.dynamic_ssl_server_credentials``, which gRPC calls before each
handshake.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .settings import TlsSettings

__all__ = ["FileWatch", "grpc_credentials", "http_context"]

logger = logging.getLogger(__name__)

_Stamp = tuple[tuple[int, int, int], ...]


class FileWatch:
    """Says, at most once per ``interval_s``, whether the TLS files changed since last asked."""

    def __init__(self, tls: TlsSettings) -> None:
        self._paths: list[Path] = [tls.cert_file, tls.key_file]
        if tls.client_ca_file is not None:
            self._paths.append(tls.client_ca_file)
        self._interval_s = tls.reload_check_s
        self._lock = threading.Lock()
        self._next_s = time.monotonic() + self._interval_s
        self._stamp = self._read_stamp()

    def _read_stamp(self) -> _Stamp | None:
        try:
            stats = [path.stat() for path in self._paths]  # follows symlinks (Secret volumes)
        except OSError:
            return None
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)

    def changed(self) -> bool:
        if self._interval_s <= 0:
            return False
        now = time.monotonic()
        with self._lock:
            if now < self._next_s:
                return False
            self._next_s = now + self._interval_s
            stamp = self._read_stamp()
            if stamp is None or stamp == self._stamp:
                return False
            self._stamp = stamp
            return True

    def retry(self) -> None:
        """Files that failed to load count as changed at the next check."""
        with self._lock:
            self._stamp = None


def http_context(tls: TlsSettings) -> ssl.SSLContext:
    """The context for uvicorn; it hands new handshakes to reloaded files by itself."""
    watch = FileWatch(tls)

    def build() -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file is not None:
            context.load_verify_locations(tls.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        context.sni_callback = switch
        return context

    def switch(connection: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        if watch.changed():
            try:
                current[0] = build()
                logger.info("HTTPS: reloaded the certificate from %s", tls.cert_file)
            except (OSError, ssl.SSLError) as exc:
                watch.retry()
                logger.error("HTTPS: new TLS files do not load (%s); keeping the old ones", exc)
        if connection.context is not current[0]:
            connection.context = current[0]

    try:
        current = [build()]
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"the TLS certificate or key does not load: {exc}") from exc
    return current[0]


def grpc_credentials(tls: TlsSettings) -> Any:
    """``grpc.ServerCredentials`` that pick up reloaded files before each new handshake."""
    import grpc

    watch = FileWatch(tls)

    def configuration() -> Any:
        key = tls.key_file.read_bytes()
        chain = tls.cert_file.read_bytes()
        ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
        # gRPC takes the PEM bytes as they are; check that they pair before handing them over.
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        probe.load_cert_chain(tls.cert_file, tls.key_file)
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)

    def fetch() -> Any:
        if not watch.changed():
            return None
        try:
            fresh = configuration()
        except (OSError, ssl.SSLError) as exc:
            watch.retry()
            logger.error("gRPC: new TLS files do not load (%s); keeping the old ones", exc)
            return None
        logger.info("gRPC: reloaded the certificate from %s", tls.cert_file)
        return fresh

    try:
        initial = configuration()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"the TLS certificate or key does not load: {exc}") from exc
    return grpc.dynamic_ssl_server_credentials(
        initial, fetch, require_client_authentication=tls.client_ca_file is not None
    )
