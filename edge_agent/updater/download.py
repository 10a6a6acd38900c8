"""Resumable downloads of a signed artifact: HTTP Range, capped at the signed size, hashed.

The bytes go to ``<file>.part``. A download cut short (a lost connection, a killed agent) goes
on from the part's length with ``Range: bytes=N-``; a server that answers 200 instead of 206
starts it over. Reading stops at the signed size plus one byte, so a server that sends more
(endless data) costs the device nothing past that. The finished part is fsynced and only then
renamed; the caller compares its sha256 with the release.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from ..errors import AgentError
from .verify import Reason, RejectedError

__all__ = ["DownloadError", "download"]

logger = logging.getLogger(__name__)


class DownloadError(AgentError):
    """The hub could not be reached or broke off; the download resumes on the next try."""


def _hash_existing(path: Path, digest: hashlib._Hash) -> int:
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size


def download(
    url: str,
    target: Path,
    *,
    size_bytes: int,
    sha256: str,
    headers: Mapping[str, str] | None = None,
    chunk_bytes: int = 64 * 1024,
    timeout_s: float = 30.0,
    stop: threading.Event | None = None,
    step: Callable[[str], None] = lambda _name: None,
) -> Path:
    """Fetch ``url`` into ``target`` (via ``target.part``); :class:`RejectedError` for a file
    that is not the signed one, :class:`DownloadError` to try again later."""
    part = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    have = _hash_existing(part, digest) if part.exists() else 0
    if have > size_bytes:
        part.unlink()
        digest, have = hashlib.sha256(), 0
    request_headers = dict(headers or {})
    if 0 < have < size_bytes:
        request_headers["Range"] = f"bytes={have}-"
    if have < size_bytes:
        request = urllib.request.Request(url, headers=request_headers)
        try:
            reply = urllib.request.urlopen(request, timeout=timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # the part is already whole (or wrong): start over
                part.unlink()
            raise DownloadError(f"the hub answered {exc.code} for {url}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise DownloadError(f"cannot reach {url}: {exc}") from exc
        with reply:
            if have and reply.status != 206:
                logger.info("%s: the hub ignored the range; downloading from the start", url)
                digest, have = hashlib.sha256(), 0
                mode = "wb"
            else:
                mode = "ab" if have else "wb"
            length = reply.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > size_bytes - have:
                part.unlink(missing_ok=True)
                raise RejectedError(
                    Reason.SIZE,
                    f"the hub offers {int(length) + have} bytes; the release signed {size_bytes}",
                )
            if have:
                logger.info("resuming %s at byte %d of %d", url, have, size_bytes)
            index = 0
            with part.open(mode) as handle:
                while True:
                    if stop is not None and stop.is_set():
                        raise DownloadError("the agent is stopping")
                    try:
                        chunk = reply.read(min(chunk_bytes, size_bytes + 1 - have))
                    except OSError as exc:
                        raise DownloadError(f"the download of {url} broke off: {exc}") from exc
                    if not chunk:
                        break
                    have += len(chunk)
                    if have > size_bytes:
                        handle.close()
                        part.unlink(missing_ok=True)
                        raise RejectedError(
                            Reason.SIZE,
                            f"the hub sent more than the signed {size_bytes} bytes; stopped",
                        )
                    handle.write(chunk)
                    handle.flush()
                    digest.update(chunk)
                    step(f"download_{index}")
                    index += 1
                os.fsync(handle.fileno())
        if have < size_bytes:
            raise DownloadError(f"the download of {url} stopped at {have} of {size_bytes} bytes")
    if digest.hexdigest() != sha256:
        part.unlink(missing_ok=True)
        raise RejectedError(
            Reason.SHA256,
            f"the downloaded file has sha256 {digest.hexdigest()}; the release signed {sha256}",
        )
    step("downloaded")
    os.replace(part, target)
    return target
