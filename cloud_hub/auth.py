"""API keys and JWT bearer tokens with scopes, and per-principal rate limits.

Both travel as ``Authorization: Bearer <token>`` (``X-API-Key: <key>`` works too). A token that
is a configured API key is that key; any other is checked as a JWT when JWT is configured.
Scopes: ``infer`` for inference, metadata and statistics; ``admin`` for repository control.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import AuthenticationError, PermissionDeniedError, RateLimitedError
from .settings import AuthSettings, JwtSettings

__all__ = ["Authenticator", "Principal", "TokenBucket"]


@dataclass(frozen=True, kw_only=True)
class Principal:
    name: str
    scopes: frozenset[str]
    rate_limit_per_s: float | None = None
    burst: int | None = None


@dataclass(kw_only=True)
class TokenBucket:
    """``rate_per_s`` sustained, ``burst`` at once; ``take`` says how long to wait when empty."""

    rate_per_s: float
    burst: int
    tokens: float = field(default=-1.0)
    updated_s: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = float(self.burst)

    def take(self, now_s: float | None = None) -> float | None:
        """Take one token; ``None`` when granted, else the seconds until one is free."""
        now_s = time.monotonic() if now_s is None else now_s
        self.tokens = min(self.burst, self.tokens + (now_s - self.updated_s) * self.rate_per_s)
        self.updated_s = now_s
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.rate_per_s


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self._keys = {
            _digest(k.key.get_secret_value()): Principal(
                name=k.name,
                scopes=frozenset(k.scopes),
                rate_limit_per_s=k.rate_limit_per_s,
                burst=k.burst,
            )
            for k in settings.api_keys
        }
        self._jwt = settings.jwt
        self._jwt_key: str | None = None
        if self._jwt is not None:
            if self._jwt.secret is not None:
                self._jwt_key = self._jwt.secret.get_secret_value()
            elif self._jwt.public_key_file is not None:
                self._jwt_key = self._jwt.public_key_file.read_text()
        self._buckets: dict[str, TokenBucket] = {}
        self.enabled = settings.enabled

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        token = _bearer(headers)
        if token is None:
            raise AuthenticationError(
                "missing credentials: send 'Authorization: Bearer <API key or token>'"
            )
        principal = self._keys.get(_digest(token))
        if principal is not None:
            return principal
        if self._jwt is None or self._jwt_key is None:
            raise AuthenticationError("invalid API key")
        return self._decode_jwt(token, self._jwt, self._jwt_key)

    def _decode_jwt(self, token: str, settings: JwtSettings, key: str) -> Principal:
        import jwt

        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=settings.algorithms,
                audience=settings.audience,
                issuer=settings.issuer,
                # Without a configured audience, a token's own ``aud`` is not held against it.
                options={"require": ["exp"], "verify_aud": settings.audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"invalid token: {exc}") from None
        raw = claims.get(settings.scope_claim, "")
        scopes = (
            raw.split()
            if isinstance(raw, str)
            else [str(s) for s in raw]
            if isinstance(raw, list)
            else []
        )
        return Principal(
            name=f"jwt:{claims.get('sub', 'anonymous')}",
            scopes=frozenset(scopes),
            rate_limit_per_s=settings.rate_limit_per_s,
            burst=settings.burst,
        )

    def authorize(self, principal: Principal, scope: str) -> None:
        if scope not in principal.scopes:
            raise PermissionDeniedError(f"{principal.name!r} lacks the {scope!r} scope")

    def rate_limit(self, principal: Principal) -> None:
        if principal.rate_limit_per_s is None:
            return
        bucket = self._buckets.get(principal.name)
        if bucket is None:
            burst = principal.burst or max(1, math.ceil(principal.rate_limit_per_s))
            bucket = self._buckets[principal.name] = TokenBucket(
                rate_per_s=principal.rate_limit_per_s, burst=burst
            )
        wait_s = bucket.take()
        if wait_s is not None:
            raise RateLimitedError(
                f"rate limit of {principal.rate_limit_per_s:g} requests/s for {principal.name!r} exceeded",
                retry_after_s=wait_s,
            )


def _bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if value:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    key = headers.get("x-api-key")
    return key.strip() if key else None
