"""One conversation turn running for a compatible door, whichever backend answers it.

On the CLI backend the turn is a job on the shared queue (same limits, audit, cancel on
disconnect) and its events come from the job's event stream. On the API backend the doors
call the upstream API directly: nothing to queue, nothing to poll, one hop less.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request

from ccgate.api.deps import services_of
from ccgate.api.middleware import audit_facts
from ccgate.api.native import job_error, submit_job, wait_for_caller
from ccgate.errors import ERROR_KINDS, ApiError
from ccgate.jobs import JobService, Submission, request_to_json
from ccgate.runners.base import RunError, RunEvent, RunRequest, RunResult, TextDelta
from ccgate.security.keys import new_id
from ccgate.store import JobRecord, JobStatus, KeyRecord
from ccgate.tickets import Ticket


def api_error_of(exc: RunError) -> ApiError:
    """The client-facing error for a runner failure."""
    error_type = exc.error_type if exc.error_type in ERROR_KINDS else "upstream_error"
    return ApiError(error_type, exc.message, retry_after=exc.retry_after)


def result_of(job: JobRecord) -> RunResult:
    """A finished job as a RunResult, or the ApiError it failed with."""
    if job.status is not JobStatus.COMPLETED:
        raise job_error(job)
    return RunResult(
        text=job.result or "",
        model=job.model,
        usage=dict(job.usage or {}),
        cost_usd=job.cost_usd,
        duration_ms=job.duration_ms,
        stop_reason=job.stop_reason,
    )


@dataclass
class Turn:
    """A turn admitted for a door: run it, stream it, and settle its ticket once."""

    request: Request
    key: KeyRecord
    door: str
    run_request: RunRequest
    ticket: Ticket
    job: JobRecord | None = None
    result: RunResult | None = None
    message_id: str = field(default_factory=lambda: new_id("msg"))

    @property
    def direct(self) -> bool:
        """True on the API backend: the turn calls the runner without a job."""
        return bool(services_of(self.request).settings.backend == "api")

    async def start(self) -> None:
        """Queue the job (CLI backend); the API backend starts when events are read."""
        if self.direct:
            return
        try:
            self.job = await submit_job(
                self.request,
                Submission(
                    key_id=self.key.id, door=self.door, request=request_to_json(self.run_request)
                ),
            )
        except BaseException:
            await self.ticket.finish()
            raise
        self.message_id = "msg_" + self.job.id.removeprefix("job_")

    async def answer(self) -> RunResult | None:
        """Run to the end; None when the client went away first (the job is cancelled)."""
        try:
            if self.direct:
                async for event in self.events():
                    if isinstance(event, RunResult):
                        return event
                raise ApiError("upstream_error", "the upstream ended without an answer")
            assert self.job is not None
            finished = await wait_for_caller(self.request, self.job.id)
            if finished is None:
                return None
            self._audit(finished)
            self.result = result_of(finished)
            return self.result
        finally:
            await self.settle()

    async def events(self) -> AsyncGenerator[RunEvent | None, None]:
        """TextDeltas then one RunResult; None stands for a quiet moment (send a ping).

        Raises ApiError when the turn fails. Closing the generator early cancels the job.
        """
        if self.direct:
            async for event in self._runner_events():
                yield event
            return
        assert self.job is not None
        jobs: JobService = services_of(self.request).jobs
        heartbeat = services_of(self.request).settings.sse_heartbeat_secs
        finished = False
        try:
            async for job_event in jobs.hub.subscribe(self.job.id, 0, heartbeat):
                if job_event is None:
                    yield None
                elif job_event.type == "chunk":
                    yield TextDelta(str(job_event.data.get("text", "")))
                elif job_event.type == "result":
                    finished = True
                    final = await services_of(self.request).store.jobs.get(self.job.id)
                    if final is None:
                        raise ApiError("not_found", "the job was deleted while it ran")
                    self._audit(final)
                    self.result = result_of(final)
                    yield self.result
                    return
            raise ApiError(
                "shutting_down", "the server is shutting down; retry on another node", retry_after=5
            )
        finally:
            if not finished:
                await asyncio.shield(jobs.cancel(self.job.id))

    async def _runner_events(self) -> AsyncIterator[RunEvent | None]:
        runner = services_of(self.request).runner
        try:
            async with contextlib.aclosing(runner.run(self.run_request)) as events:
                async for event in events:
                    if isinstance(event, RunResult):
                        self.result = event
                        self._audit_result(event)
                    yield event
        except RunError as exc:
            audit_facts(self.request)["error_type"] = exc.error_type
            raise api_error_of(exc) from None

    async def open_stream(self) -> tuple[RunEvent, AsyncGenerator[RunEvent | None, None]]:
        """Start the events and wait for the first real one, so a turn that fails at once
        answers a real HTTP error status instead of an error inside a 200 stream."""
        events = self.events()
        try:
            async for event in events:
                if event is not None:
                    return event, events
            raise ApiError("upstream_error", "the run ended without an answer")
        except BaseException:
            await self.close_stream(events)
            raise

    async def close_stream(self, events: AsyncGenerator[RunEvent | None, None]) -> None:
        """Stop reading (cancelling the job if it still runs) and settle the ticket."""
        await events.aclose()
        await self.settle()

    async def settle(self) -> None:
        """Free the ticket with the turn's usage (idempotent)."""
        usage = self.result.usage if self.result else None
        cost = self.result.cost_usd if self.result else None
        await self.ticket.finish(usage, cost)

    def _audit(self, job: JobRecord) -> None:
        usage = job.usage or {}
        audit_facts(self.request).update(
            job_id=job.id,
            job_status=job.status.value,
            model=job.model,
            input_tokens=usage.get("input_tokens"),
            output_tokens=usage.get("output_tokens"),
            cost_usd=job.cost_usd,
            error_type=job.error_type,
            response_bytes=len((job.result or "").encode("utf-8")),
        )

    def _audit_result(self, result: RunResult) -> None:
        audit_facts(self.request).update(
            model=result.model,
            input_tokens=result.usage.get("input_tokens"),
            output_tokens=result.usage.get("output_tokens"),
            cost_usd=result.cost_usd,
            job_status="completed",
            response_bytes=len(result.text.encode("utf-8")),
        )
