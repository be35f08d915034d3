"""Who is calling: the key from ``Authorization: Bearer`` or ``X-API-Key``."""

from __future__ import annotations

import hmac

from fastapi import Request

from ccgate.api.deps import services_of
from ccgate.errors import ApiError
from ccgate.security.enrollment import looks_like_device_token
from ccgate.security.netrules import key_allows
from ccgate.security.signin_throttle import SignInThrottle
from ccgate.store import KeyRecord


def presented_secret(request: Request) -> str | None:
    """The key the client sent, from either header; None when it sent neither."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = request.headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


async def require_key(request: Request) -> KeyRecord:
    """FastAPI dependency: the caller's active key, or a 401 in the door's error shape."""
    secret = presented_secret(request)
    if secret is None:
        raise ApiError(
            "authentication_error",
            "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
        )
    enrollment = services_of(request).enrollment
    if enrollment is not None and looks_like_device_token(secret):
        record = await enrollment.verify(secret)
        if record is None:
            raise ApiError("authentication_error", "invalid, expired or revoked device token")
    else:
        record = await services_of(request).keyring.verify(secret)
        if record is None:
            raise ApiError("authentication_error", "invalid or revoked API key")
    request.scope["ccgate.key_name"] = record.name
    if not key_allows(record.policy.ip_cidrs, request.scope.get("ccgate.client_address")):
        raise ApiError("forbidden", "this key may not be used from this address (its ip_cidrs)")
    return record


async def require_admin(request: Request) -> None:
    """FastAPI dependency: the admin token, compared in constant time, or 401/404 (429 while
    the client's address is locked out after repeated wrong tokens)."""
    token: str | None = services_of(request).settings.admin_token
    if token is None:
        raise ApiError(
            "admin_disabled", "the admin API is off: set CCGATE_ADMIN_TOKEN to turn it on"
        )
    if not admin_signed_in(request, token):
        raise ApiError("authentication_error", "missing or wrong admin token")


def admin_signed_in(request: Request, token: str) -> bool:
    """True when the request carries the admin token ``token``.

    Each wrong token counts against the client's address; while that address is locked out
    (``SignInThrottle``) this raises 429 ``signin_throttled`` without reading the token, so a
    right guess is never confirmed during a lock-out.
    """
    presented = presented_secret(request)
    if presented is None:
        return False
    throttle: SignInThrottle = services_of(request).admin_signins
    address = request.scope.get("ccgate.client_address")
    wait = throttle.retry_after(address)
    if wait is not None:
        raise ApiError(
            "signin_throttled",
            "too many wrong admin tokens from this address; wait before trying again",
            retry_after=wait,
        )
    if not hmac.compare_digest(presented.encode(), token.encode()):
        throttle.failed(address)
        return False
    throttle.succeeded(address)
    request.scope["ccgate.key_name"] = "admin"
    return True
