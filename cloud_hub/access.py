"""Who may call what: credentials, scopes and rate limits, or loopback only when none are set."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping

from .auth import Authenticator, Principal
from .errors import HubError, PermissionDeniedError
from .metrics import HubMetrics
from .settings import AuthSettings

__all__ = ["Access", "is_loopback"]


@functools.lru_cache(maxsize=1024)
def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Access:
    def __init__(self, settings: AuthSettings, metrics: HubMetrics) -> None:
        self._authenticator = Authenticator(settings)
        self._metrics = metrics

    def check(
        self, headers: Mapping[str, str], client_host: str | None, scope: str
    ) -> Principal | None:
        """The caller, if allowed ``scope``; raises 401, 403 or 429 otherwise (and counts it)."""
        try:
            if not self._authenticator.enabled:
                if not is_loopback(client_host):
                    raise PermissionDeniedError(
                        "this hub has no credentials configured and serves loopback clients only"
                    )
                return None
            principal = self._authenticator.authenticate(headers)
            self._authenticator.authorize(principal, scope)
            self._authenticator.rate_limit(principal)
            return principal
        except HubError as exc:
            self.rejected(type(exc).__name__)
            raise

    def rejected(self, reason: str) -> None:
        self._metrics.rejected.labels(reason=reason).inc()
