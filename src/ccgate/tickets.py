"""Admission tickets: what an admitted request holds until its work ends, settled once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ccgate import metrics
from ccgate.store import JobRecord, KeyRecord
from ccgate.turns import Usage

if TYPE_CHECKING:
    from ccgate.limits import Admission


@dataclass
class Ticket:
    """A request admitted under its key's limits; ``finish`` once, when its work ends."""

    key: KeyRecord
    admission: Admission | None = None
    headers: dict[str, str] = field(default_factory=dict)
    finished: bool = False
    model: str | None = None

    async def finish(self, usage: Usage | None = None, cost_usd: float | None = None) -> None:
        """Free the concurrency slot, drop the reservation and count the run's real tokens
        (input + output) and cost (idempotent)."""
        if self.finished:
            return
        self.finished = True
        metrics.record_usage(
            self.model, self.key.name, usage.as_dict() if usage else None, cost_usd
        )
        if self.admission is None:
            return
        tokens = usage.billed_tokens if usage else 0
        await self.admission.settle(tokens=tokens, cost_usd=cost_usd)


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
            self._finish_later(ticket, Usage.from_mapping(job.usage), job.cost_usd)

    def _finish_later(self, ticket: Ticket, usage: Usage | None, cost_usd: float | None) -> None:
        task = asyncio.create_task(ticket.finish(usage, cost_usd))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
