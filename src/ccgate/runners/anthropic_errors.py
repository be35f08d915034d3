"""Upstream answers into the documented RunErrors, and the headers worth passing on.

Shared by the Anthropic API client (HTTP statuses) and the message reader (error events
inside a 2xx stream), so both map a failure the same way (docs/backends.md, "Errors").
"""

from __future__ import annotations

from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from ccgate.clock import utcnow
from ccgate.runners.base import RunError

_PASSED_HEADERS = frozenset({"content-type", "request-id", "retry-after"})
_RATELIMIT_PREFIX = "anthropic-ratelimit-"
_ERROR_BODY_LIMIT = 64 * 1024
_OVERLOADED_STATUSES = frozenset({500, 502, 503, 504, 529})
# What an in-stream error event stands for, so it maps like the same HTTP error would.
_EVENT_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def passable_headers(headers: httpx.Headers) -> dict[str, str]:
    """The upstream response headers worth passing on to a client; nothing else."""
    return {
        name: value
        for name, value in headers.items()
        if name in _PASSED_HEADERS or name.startswith(_RATELIMIT_PREFIX)
    }


def retry_after_from(headers: httpx.Headers, now: datetime | None = None) -> float | None:
    """Seconds to wait: ``retry-after``, else the ``anthropic-ratelimit-*-reset`` times.

    Among reset times, the latest of the limits at ``remaining: 0`` (all must free up), else
    the earliest one.
    """
    now = now or utcnow()
    value = headers.get("retry-after", "").strip()
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, (parsedate_to_datetime(value) - now).total_seconds())
            except (TypeError, ValueError):
                pass
    resets: list[float] = []
    exhausted: list[float] = []
    for name, raw in headers.items():
        if not (name.startswith(_RATELIMIT_PREFIX) and name.endswith("-reset")):
            continue
        try:
            when = datetime.fromisoformat(raw.strip())
        except ValueError:
            continue
        if when.tzinfo is None:
            continue
        secs = max(0.0, (when - now).total_seconds())
        resets.append(secs)
        if headers.get(name.removesuffix("reset") + "remaining", "").strip() == "0":
            exhausted.append(secs)
    if exhausted:
        return max(exhausted)
    return min(resets) if resets else None


def error_detail(payload: object) -> tuple[str | None, str]:
    """(error type, message) from an Anthropic error envelope, tolerating anything else."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None, ""
    kind = error.get("type")
    return (kind if isinstance(kind, str) else None), str(error.get("message") or "")


def event_error(event: dict[str, Any], message: str) -> RunError:
    """The RunError for an ``error`` event inside a stream; ``message`` is its cleaned text."""
    upstream_type, _ = error_detail(event)
    status = _EVENT_ERROR_STATUS.get(upstream_type or "", 500)
    return error_for(status, message or upstream_type or "error event", None)


def error_for(status: int, message: str, retry_after: float | None) -> RunError:
    """The documented RunError for an upstream HTTP status."""
    if status == 429:
        return RunError(
            "upstream_rate_limited",
            f"The upstream API rate-limited this server's API key: {message}",
            retry_after=retry_after,
            upstream_status=status,
        )
    if status in (401, 403):
        return RunError(
            "upstream_auth_error",
            f"The upstream API refused the server's API key "
            f"({status}): {message}. The operator must fix ANTHROPIC_API_KEY.",
            upstream_status=status,
        )
    if status == 413:
        return RunError(
            "upstream_request_too_large",
            f"The upstream API refused the request as too large: {message}",
            upstream_status=status,
        )
    if status in _OVERLOADED_STATUSES:
        return RunError(
            "upstream_overloaded",
            f"The upstream API is overloaded or unavailable ({status}): {message}",
            retry_after=retry_after,
            upstream_status=status,
        )
    if 400 <= status < 500:
        return RunError("upstream_bad_request", message, upstream_status=status)
    return RunError(
        "upstream_error",
        f"The upstream API answered HTTP {status}: {message}",
        retry_after=retry_after,
        upstream_status=status,
    )


async def read_error_body(response: httpx.Response) -> bytes:
    """Up to 64 KiB of an error body; a body that breaks off is as good as empty."""
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            parts.append(chunk)
            size += len(chunk)
            if size >= _ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError:
        return b""
    finally:
        await response.aclose()
    return b"".join(parts)
