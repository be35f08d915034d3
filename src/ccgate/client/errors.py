"""The exceptions a ccgate client raises: each API error carries what the gateway said."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "APIError",
    "CcgateError",
    "ConfigurationError",
    "ConnectionFailed",
    "RateLimitError",
    "WaitTimeout",
    "WebhookVerificationError",
    "error_from_response",
]


class CcgateError(Exception):
    """Base class of every error the client raises."""


class ConfigurationError(CcgateError):
    """The client was given (or found in the environment) no usable URL or key."""


class ConnectionFailed(CcgateError):
    """The gateway could not be reached, or a stream kept dropping past its reconnect limit."""


class WaitTimeout(CcgateError):
    """``wait`` gave up before the job ended; the job itself goes on."""


class WebhookVerificationError(CcgateError):
    """A webhook's signature or timestamp did not check out: do not trust its body."""


class APIError(CcgateError):
    """The gateway answered with an error: its type, status, message and request id."""

    def __init__(
        self,
        *,
        type: str,
        status: int,
        message: str,
        request_id: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        job_id: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        """Keep every fact of the error answer; ``str()`` shows type, status and message."""
        super().__init__(f"{type} ({status}): {message}")
        self.type = type
        self.status = status
        self.message = message
        self.request_id = request_id
        self.param = param
        self.retry_after = retry_after
        self.job_id = job_id
        self.body: Mapping[str, Any] = body or {}


class RateLimitError(APIError):
    """A 429: a limit of the key, the server or upstream is spent; see ``retry_after``."""


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: ccgate never sends one
    return seconds if seconds is not None and seconds >= 0 else None


def error_from_response(status: int, headers: Mapping[str, str], content: bytes) -> APIError:
    """The exception for an error answer, from its status, headers and body bytes."""
    try:
        parsed = json.loads(content) if content else None
    except ValueError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        error = {}
    request_id = headers.get("request-id") or headers.get("x-request-id")
    kind = error.get("type")
    message = error.get("message")
    cls = RateLimitError if status == 429 else APIError
    return cls(
        type=kind if isinstance(kind, str) else "http_error",
        status=status,
        message=message if isinstance(message, str) else f"HTTP {status}",
        request_id=_text(error.get("request_id")) or request_id,
        param=_text(error.get("param")),
        retry_after=_retry_after(headers.get("retry-after")),
        job_id=_text(error.get("job_id")),
        body=parsed if isinstance(parsed, dict) else None,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
