"""Every error type a client can see, with its HTTP status; one catalogue for all doors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeGuard, get_args

# Every catalogue entry by name, so mypy checks each ``ApiError("...")``; a unit test keeps
# this list and ``ERROR_KINDS`` the same.
ErrorType = Literal[
    "invalid_request",
    "authentication_error",
    "forbidden",
    "model_not_allowed",
    "admin_disabled",
    "feature_disabled",
    "not_found",
    "method_not_allowed",
    "cancelled",
    "conflict",
    "idempotency_conflict",
    "request_too_large",
    "upstream_request_too_large",
    "rpm_exceeded",
    "rpd_exceeded",
    "tokens_per_day_exceeded",
    "budget_exceeded",
    "window_share_exceeded",
    "concurrency_exceeded",
    "global_rpd_exceeded",
    "fetch_rpm_exceeded",
    "signin_throttled",
    "destination_blocked",
    "limits_unavailable",
    "circuit_open",
    "upstream_error",
    "upstream_bad_request",
    "schema_validation_failed",
    "upstream_rate_limited",
    "upstream_auth_error",
    "cli_error",
    "upstream_overloaded",
    "queue_full",
    "shutting_down",
    "cli_unavailable",
    "interrupted",
    "timeout",
    "internal_error",
]


@dataclass(frozen=True)
class ErrorKind:
    """A documented error type: its status and when it happens."""

    status: int
    meaning: str


ERROR_KINDS: Mapping[ErrorType, ErrorKind] = {
    "invalid_request": ErrorKind(
        400,
        "Malformed JSON, a missing or invalid field (named in the "
        "message), or a model that is not allowed.",
    ),
    "authentication_error": ErrorKind(401, "No key, an unknown key or a revoked key."),
    "forbidden": ErrorKind(
        403,
        "The client address is not allowed (CCGATE_ALLOW_CIDRS or the "
        "key's ip_cidrs; for /metrics, CCGATE_METRICS_ALLOW_CIDRS or "
        "CCGATE_METRICS_TOKEN).",
    ),
    "model_not_allowed": ErrorKind(403, "The key may not use this model (its `models` list)."),
    "admin_disabled": ErrorKind(404, "The admin API is off because CCGATE_ADMIN_TOKEN is unset."),
    "feature_disabled": ErrorKind(
        404,
        "The route belongs to a feature the operator has not turned on (fetch, device enrollment).",
    ),
    "not_found": ErrorKind(404, "No such route or job (or the job belongs to another key)."),
    "method_not_allowed": ErrorKind(405, "The route exists but not for this HTTP method."),
    "cancelled": ErrorKind(409, "The job was cancelled before it finished."),
    "conflict": ErrorKind(
        409,
        "The job is already finished (cancel of an ended job), a "
        "webhook cannot be redelivered (no callback, not ended, one "
        "pending, limit spent), or a key name is already taken (admin API).",
    ),
    "idempotency_conflict": ErrorKind(
        409, "An Idempotency-Key was reused with a different request body."
    ),
    "request_too_large": ErrorKind(
        413, "The body exceeds CCGATE_MAX_BODY_BYTES or the prompt exceeds CCGATE_MAX_PROMPT_BYTES."
    ),
    "upstream_request_too_large": ErrorKind(
        413, "The upstream API refused the prompt as too large."
    ),
    "rpm_exceeded": ErrorKind(
        429, "The key's requests-per-minute limit is spent; Retry-After says when it frees."
    ),
    "rpd_exceeded": ErrorKind(429, "The key's requests-per-day limit is spent."),
    "tokens_per_day_exceeded": ErrorKind(429, "The key's tokens-per-day quota is spent."),
    "budget_exceeded": ErrorKind(429, "The key's monthly budget in USD is spent."),
    "window_share_exceeded": ErrorKind(
        429,
        "The key used its `window_share` of the plan "
        "window; Retry-After says when the window resets.",
    ),
    "concurrency_exceeded": ErrorKind(
        429, "The key already runs as many jobs as its `concurrency` allows."
    ),
    "global_rpd_exceeded": ErrorKind(
        429, "The server-wide requests-per-day limit (CCGATE_GLOBAL_RPD) is spent."
    ),
    "fetch_rpm_exceeded": ErrorKind(429, "The key's page-fetch limit (CCGATE_FETCH_RPM) is spent."),
    "signin_throttled": ErrorKind(
        429,
        "Too many wrong admin tokens came from this client "
        "address; Retry-After says when it may try again.",
    ),
    "destination_blocked": ErrorKind(
        403, "A fetch or redirect led to a private, loopback or otherwise forbidden address."
    ),
    "limits_unavailable": ErrorKind(
        503,
        "The rate-limit store (Redis) cannot be reached, so "
        "no request can be checked against its limits.",
    ),
    "circuit_open": ErrorKind(
        503,
        "The API backend's circuit breaker is open after repeated "
        "upstream failures; Retry-After says when it probes again.",
    ),
    "upstream_error": ErrorKind(
        502, "The upstream API answered with something ccgate could not use."
    ),
    "upstream_bad_request": ErrorKind(
        400, "The upstream API refused the request (for example a prompt over the model's context)."
    ),
    "schema_validation_failed": ErrorKind(
        422,
        "The answer did not match the request's JSON Schema, even after one repair run; the "
        "message holds the validator's, the job's `result` the raw text.",
    ),
    "upstream_rate_limited": ErrorKind(
        429,
        "The account behind the CLI or the API key is "
        "rate-limited upstream (or its usage limit is "
        "reached); Retry-After from the upstream reset.",
    ),
    "upstream_auth_error": ErrorKind(
        502,
        "The claude CLI is not logged in, or the API key "
        "behind it or behind the API backend is "
        "invalid (upstream 401/403). Fix on the server.",
    ),
    "cli_error": ErrorKind(
        502,
        "The claude CLI crashed or ended without a result; the message "
        "holds the last lines of its stderr.",
    ),
    "upstream_overloaded": ErrorKind(
        503, "The upstream API is overloaded or unavailable (500/529)."
    ),
    "queue_full": ErrorKind(
        503, "CCGATE_QUEUE_SIZE jobs are already waiting; Retry-After says when to try again."
    ),
    "shutting_down": ErrorKind(503, "The server is stopping and takes no new jobs."),
    "cli_unavailable": ErrorKind(503, "The claude CLI is not installed or cannot be started."),
    "interrupted": ErrorKind(
        503, "The node running the job died more often than CCGATE_MAX_ATTEMPTS allows."
    ),
    "timeout": ErrorKind(
        504,
        "The run hit its wall-clock (timeout_secs) or idle "
        "(CCGATE_IDLE_TIMEOUT_SECS) limit; the message says which.",
    ),
    "internal_error": ErrorKind(500, "A bug in ccgate; the request id finds it in the logs."),
}


ERROR_TYPES: frozenset[str] = frozenset(get_args(ErrorType))


def is_error_type(name: object) -> TypeGuard[ErrorType]:
    """True when ``name`` is a documented error type."""
    return name in ERROR_TYPES


def error_type_of(name: str | None, default: ErrorType) -> ErrorType:
    """``name`` as a documented error type (a runner's or a job row's string), else
    ``default``: the one checked conversion from a dynamic error type."""
    return name if is_error_type(name) else default


class ApiError(Exception):
    """An error to send to the client in the door's error shape."""

    def __init__(
        self,
        error_type: ErrorType,
        message: str,
        *,
        retry_after: float | None = None,
        param: str | None = None,
        extra: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.retry_after = retry_after
        self.param = param
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    @property
    def status(self) -> int:
        """The HTTP status of this error's type."""
        return ERROR_KINDS[self.error_type].status
