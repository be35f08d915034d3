"""The one gate every door passes after validating a request: model rules, then limits.

A door validates the body first (a bad request spends no quota), then calls ``admit`` with an
estimate of what the request may spend; it gets the model to run and a ``Ticket`` that frees
the key's concurrency slot, drops the request's reservation and records the run's real tokens
and cost when the work is done, whichever way it ends.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import Request

from ccgate import metrics, tracing
from ccgate.api.middleware import audit_facts
from ccgate.errors import ApiError
from ccgate.models import ModelForbidden, ModelNotAllowed, ModelPolicy
from ccgate.store import JobRecord, KeyRecord

if TYPE_CHECKING:
    from ccgate.limits import Admission, RunEstimate

log = structlog.get_logger("ccgate.admission")


def resolve_model(request: Request, key: KeyRecord, requested: str | None) -> str:
    """The model to run, or 400 (server does not serve it) / 403 (key may not use it)."""
    models: ModelPolicy = request.app.state.models
    try:
        return models.resolve(requested, key.policy.models)
    except ModelNotAllowed as exc:
        raise ApiError("invalid_request", str(exc), param="model") from None
    except ModelForbidden as exc:
        raise ApiError("model_not_allowed", str(exc), param="model") from None


@dataclass
class Ticket:
    """A request admitted under its key's limits; ``finish`` once, when its work ends."""

    key: KeyRecord
    admission: Admission | None = None
    headers: dict[str, str] = field(default_factory=dict)
    finished: bool = False
    model: str | None = None

    async def finish(
        self, usage: dict[str, Any] | None = None, cost_usd: float | None = None
    ) -> None:
        """Free the concurrency slot, drop the reservation and count the run's real tokens
        (input + output) and cost (idempotent)."""
        if self.finished:
            return
        self.finished = True
        metrics.record_usage(self.model, self.key.name, usage, cost_usd)
        if self.admission is None:
            return
        tokens = (
            sum(int(usage.get(k) or 0) for k in ("input_tokens", "output_tokens")) if usage else 0
        )
        await self.admission.settle(tokens=tokens, cost_usd=cost_usd)


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
    limiter = getattr(request.app.state, "limiter", None)
    if limiter is None:
        return Ticket(key)
    from ccgate.limits import LimitExceeded, rate_headers

    if estimate is not None and request.app.state.settings.backend == "cli":
        # The CLI has no flag for max_tokens and ignores it: a small one caps nothing, so it
        # must not shrink the reservation either.
        estimate = replace(estimate, max_output_tokens=None)
    try:
        with tracing.span("ccgate.admission", door=door):
            admission = await limiter.admit(key.id, key.policy, estimate, spends=spends)
    except LimitExceeded as exc:
        audit_facts(request)["error_type"] = exc.error_type
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


class JobTickets:
    """Tickets of queued jobs, finished when the job ends on this node."""

    def __init__(self) -> None:
        self._by_job: dict[str, Ticket] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def hold(self, job_id: str, ticket: Ticket) -> None:
        """Keep ``ticket`` until job ``job_id`` ends. A job holds one ticket: a second one
        (the same submission admitted twice) is finished at once rather than leaked."""
        if job_id in self._by_job:
            self._finish_later(ticket, None, None)
            return
        self._by_job[job_id] = ticket

    def job_finished(self, job: JobRecord) -> None:
        """JobService.on_finished hook: finish the job's ticket with its usage."""
        ticket = self._by_job.pop(job.id, None)
        if ticket is not None:
            self._finish_later(ticket, job.usage, job.cost_usd)

    def _finish_later(
        self, ticket: Ticket, usage: dict[str, Any] | None, cost_usd: float | None
    ) -> None:
        task = asyncio.create_task(ticket.finish(usage, cost_usd))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
