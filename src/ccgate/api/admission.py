"""The one gate every door passes after validating a request: model rules, then limits.

A door validates the body first (a bad request spends no quota), then calls ``admit`` with an
estimate of what the request may spend; it gets the model to run and a ``Ticket`` that frees
the key's concurrency slot, drops the request's reservation and records the run's real tokens
and cost when the work is done, whichever way it ends.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import structlog
from fastapi import Request

from ccgate import metrics, tracing
from ccgate.api.deps import services_of
from ccgate.api.middleware import audit_facts
from ccgate.errors import ApiError
from ccgate.models import ModelForbidden, ModelNotAllowed, ModelPolicy
from ccgate.store import KeyRecord
from ccgate.tickets import Ticket

if TYPE_CHECKING:
    from ccgate.limits import RunEstimate

log = structlog.get_logger("ccgate.admission")


def resolve_model(request: Request, key: KeyRecord, requested: str | None) -> str:
    """The model to run, or 400 (server does not serve it) / 403 (key may not use it)."""
    models: ModelPolicy = services_of(request).models
    try:
        return models.resolve(requested, key.policy.models)
    except ModelNotAllowed as exc:
        raise ApiError("invalid_request", str(exc), param="model") from None
    except ModelForbidden as exc:
        raise ApiError("model_not_allowed", str(exc), param="model") from None


async def admit(
    request: Request,
    key: KeyRecord,
    door: str,
    estimate: RunEstimate | None = None,
    *,
    spends: bool = True,
) -> Ticket:
    """Spend one request of the key's limits and reserve ``estimate`` of its token and budget
    quotas; raise 429 with Retry-After when a limit is spent or cannot cover the estimate.

    ``spends=False`` marks a request that costs no tokens or money (count_tokens): it counts
    against the request limits and concurrency only. The rate-limit headers of the door's
    convention go on the eventual response (and on the 429 itself).
    """
    limiter = services_of(request).limiter
    if limiter is None:
        return Ticket(key)
    from ccgate.limits import LimitExceeded, rate_headers

    if estimate is not None and not services_of(request).backend.capabilities.honours_max_tokens:
        # A backend that ignores max_tokens (the CLI has no flag for it): a small one caps
        # nothing, so it must not shrink the reservation either.
        estimate = replace(estimate, max_output_tokens=None)
    try:
        with tracing.span("ccgate.admission", door=door):
            admission = await limiter.admit(key.id, key.policy, estimate, spends=spends)
    except LimitExceeded as exc:
        audit_facts(request).error_type = exc.error_type
        metrics.limit_refused(exc.error_type)
        raise exc.use_door(door) from None
    except Exception as exc:  # e.g. Redis unreachable: refuse rather than run unchecked
        log.warning("limits_unavailable", error=type(exc).__name__)
        raise ApiError(
            "limits_unavailable",
            "the rate-limit store cannot be reached; retry later",
            retry_after=5,
        ) from None
    ticket = Ticket(
        key,
        admission,
        rate_headers(door, admission.state),
        model=estimate.model if estimate is not None else None,
    )
    request.scope["ccgate.rate_headers"] = ticket.headers
    return ticket
