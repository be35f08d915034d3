"""One turn's lifecycle, whatever door it came in by: admit, run, settle exactly once.

A door parses its wire format into a ``RunRequest`` (or a body to pass upstream), opens a
``Turn`` with ``Turn.admit`` (model rules and limits, via ``api/admission``) and renders what
the turn yields. The turn runs one of three ways:

- as a job on the shared queue (``run_job`` for the native and compat doors, ``start`` then
  ``answer``/``stream`` for the compatible doors on a backend without ``capabilities.direct``),
  or handed to ``JobTickets`` for an async job (``queue_async``);
- directly on the runner when the backend declares ``capabilities.direct``;
- as the raw pass-through (``send_upstream``/``stream_upstream``) when the door asks for it and
  the backend declares ``capabilities.passthrough``.

Whatever happens (an answer, an upstream error, the client gone, a cancel, a shutdown), the
admission ticket is settled once with the turn's usage and cost, and the audit facts say so.
Used as ``async with turn:`` a failure before the answer settles the ticket on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from fastapi import Request
from fastapi.responses import Response

from ccgate.api.admission import admit
from ccgate.api.deps import services_of
from ccgate.api.errors import CLIENT_CLOSED_REQUEST
from ccgate.api.middleware import AuditFacts, audit_facts
from ccgate.api.streaming import ClosingStreamingResponse
from ccgate.errors import ApiError, error_type_of
from ccgate.ids import new_id
from ccgate.jobs import (
    IdempotencyConflict,
    JobService,
    NotAccepting,
    QueueFull,
    Submission,
    request_to_json,
)
from ccgate.jobs.schema_repair import SCHEMA_VALIDATION_FAILED, SchemaMismatch, answer_to_schema
from ccgate.jobs.windows import WindowsClosed
from ccgate.pricing import cost_usd
from ccgate.runners.base import RunError, RunEvent, RunRequest, RunResult, TextDelta
from ccgate.store import JobRecord, JobStatus, KeyRecord
from ccgate.structured import asking_for_schema
from ccgate.tickets import Ticket
from ccgate.turns import Usage

if TYPE_CHECKING:
    from ccgate.limits import RunEstimate

T = TypeVar("T")


def _unsent(final: str, sent: str) -> str:
    """What of the final answer a stream has not sent yet. The answer must go on from what
    was sent (give or take trailing whitespace the runner trimmed): the CLI answers a stream
    that broke mid-way by asking again, and a second answer glued to half of the first would be
    a wrong answer, so that stream ends with an error instead."""
    if final.startswith(sent):
        return final[len(sent) :]
    if final.startswith(sent.rstrip()) and not final[len(sent.rstrip()) :].strip():
        return ""
    raise ApiError(
        "upstream_error",
        "the answer was started again after part of it had been streamed; ask again "
        "(or read the whole answer without streaming)",
    )


def client_closed() -> Response:
    """The answer to a client that went away before its answer (logged and audited as 499)."""
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def api_error_of(exc: RunError) -> ApiError:
    """The client-facing error for a runner failure."""
    return ApiError(
        error_type_of(exc.error_type, "upstream_error"), exc.message, retry_after=exc.retry_after
    )


def job_error(job: JobRecord) -> ApiError:
    """The ApiError a failed or cancelled job answers a synchronous caller with."""
    error_type = error_type_of(job.error_type, "cli_error")
    if job.status is JobStatus.CANCELLED:
        error_type = "cancelled"
    extra: dict[str, object] = {"job_id": job.id}
    if error_type == "schema_validation_failed":
        extra["raw_text"] = job.result or ""  # the answer that did not match, as written
    return ApiError(
        error_type,
        job.error_message or "the job failed",
        retry_after=job.retry_after,
        extra=extra,
    )


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


def _usage_of(raw: dict[str, Any] | None) -> Usage | None:
    return Usage.from_mapping(raw) if raw else None


def _shutting_down() -> ApiError:
    return ApiError(
        "shutting_down", "the server is shutting down; retry on another node", retry_after=5
    )


async def submit_job(request: Request, submission: Submission) -> JobRecord:
    """Queue a job for a caller that waits for it, mapping a full or stopping queue to 503,
    a reused key to 409 and a used-up plan window to 429 with Retry-After at its reset."""
    sync = replace(submission, waits_for_window=False)
    try:
        job, _ = await submit_job_once(request, sync)
    except WindowsClosed as exc:
        raise ApiError(
            "window_share_exceeded" if exc.share else "upstream_rate_limited",
            str(exc),
            retry_after=exc.retry_after,
        ) from None
    return job


async def submit_job_once(request: Request, submission: Submission) -> tuple[JobRecord, bool]:
    """``submit_job``, also saying whether the job is new (False: the key's earlier job under
    the same Idempotency-Key, whose admission ticket is held already)."""
    services = services_of(request)
    if services.requires_cli:
        cli = await services.cli_status.refresh()
        if cli.problem:
            raise ApiError("cli_unavailable", cli.problem)
    try:
        job, new = await services.jobs.submit(submission)
    except QueueFull as exc:
        raise ApiError(
            "queue_full", "the job queue is full; retry later", retry_after=exc.retry_after
        ) from None
    except NotAccepting:
        raise _shutting_down() from None
    except IdempotencyConflict:
        raise ApiError(
            "idempotency_conflict",
            "this Idempotency-Key was already used with a different request body",
        ) from None
    facts = audit_facts(request)
    facts.job_id, facts.model = job.id, job.model
    return job, new


async def wait_for_caller(request: Request, job_id: str) -> JobRecord | None:
    """Wait for a synchronous caller's job; None when the caller went away first (the job
    is cancelled). A node that stops before the run could finish cancels it (nobody would
    collect a later answer) and answers 503."""
    jobs: JobService = services_of(request).jobs
    try:
        waiter = asyncio.create_task(jobs.wait(job_id))
        watcher = asyncio.create_task(_client_gone(request))
        try:
            await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if waiter.done():
            return waiter.result()
        waiter.cancel()
        await jobs.cancel(job_id)
        return None
    except NotAccepting:
        await jobs.cancel(job_id)
        raise _shutting_down() from None


async def _client_gone(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class StreamRenderer(Protocol):
    """How a door writes a turn's events as its own server-sent events."""

    def opening(self) -> list[bytes]:
        """What goes out before the first text (role, message start)."""
        ...

    def ping(self) -> bytes:
        """A keep-alive for a quiet moment."""
        ...

    def text(self, text: str) -> bytes:
        """One piece of the answer's text."""
        ...

    def closing(self, result: RunResult) -> list[bytes]:
        """What ends a finished answer (stop reason, usage, the end marker)."""
        ...

    def error(self, error: ApiError) -> bytes:
        """The error frame, in the door's error shape."""
        ...


@dataclass
class Turn:
    """One admitted turn: run it, stream it, and settle its ticket exactly once."""

    request: Request
    key: KeyRecord
    door: str
    ticket: Ticket
    run_request: RunRequest | None = None
    job: JobRecord | None = None
    result: RunResult | None = None
    message_id: str = field(default_factory=lambda: new_id("msg"))

    @classmethod
    async def admit(
        cls,
        request: Request,
        key: KeyRecord,
        door: str,
        estimate: RunEstimate | None = None,
        *,
        run_request: RunRequest | None = None,
        spends: bool = True,
    ) -> Turn:
        """Admit a turn under the key's limits (429 when a limit is spent)."""
        ticket = await admit(request, key, door, estimate, spends=spends)
        return cls(request, key, door, ticket, run_request)

    async def __aenter__(self) -> Turn:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # A turn that fails (or is cancelled) before its answer frees its ticket on the way
        # out; an answer or an open stream settles it itself.
        if exc is not None:
            await self.settle()

    async def settle(self, usage: Usage | None = None, cost: float | None = None) -> None:
        """Free the ticket with the turn's usage and cost (idempotent: the first call wins)."""
        await self.ticket.finish(usage, cost)

    @property
    def facts(self) -> AuditFacts:
        """This request's audit facts."""
        return audit_facts(self.request)

    # -- a job on the queue, answered to a waiting caller (native and compat doors) ----------

    async def run_job(self, submission: Submission) -> JobRecord | None:
        """Queue the job and wait for it; None when the client went away (job cancelled).

        The ticket is settled with the job's usage however this ends."""
        finished: JobRecord | None = None
        try:
            self.job = await submit_job(self.request, self._admitted(submission))
            finished = await wait_for_caller(self.request, self.job.id)
        finally:
            await self.settle(
                _usage_of(finished.usage) if finished else None,
                finished.cost_usd if finished else None,
            )
        if finished is None:
            self.facts.job_status = "cancelled"
        return finished

    def _admitted(self, submission: Submission) -> Submission:
        # The policy this turn was admitted under: the queue checks the key's plan-window
        # share against it instead of reading the key again.
        return replace(submission, key_policy=self.key.policy)

    def record_job(self, job: JobRecord, prompt: str) -> None:
        """Add the finished job's facts (and the prompt, if audited) to the audit row."""
        facts = self.facts
        facts.job_status = job.status.value
        facts.model = job.model
        facts.prompt_bytes = len(prompt.encode("utf-8"))
        facts.response_bytes = len(job.result.encode("utf-8")) if job.result else 0
        facts.add_usage(_usage_of(job.usage), job.cost_usd)
        facts.error_type = job.error_type
        if services_of(self.request).settings.audit_prompts:
            facts.prompt_text = prompt

    # -- an async job: its ticket is held until the job ends ----------------------------------

    async def queue_async(self, submission: Submission) -> JobRecord:
        """Queue the job and hand the ticket to ``JobTickets`` (a twin's is settled now)."""
        async with self:
            job, new = await submit_job_once(self.request, self._admitted(submission))
        if new:
            services_of(self.request).job_tickets.hold(job.id, self.ticket)
        else:  # a concurrent twin stored the job first; its ticket is the one held
            await self.settle()
        return job

    # -- a conversation turn for the compatible doors, on either backend ---------------------

    @property
    def direct(self) -> bool:
        """True when the backend runs turns directly instead of queueing a job."""
        return services_of(self.request).backend.capabilities.direct

    async def start(self) -> None:
        """Queue the job (a backend without ``direct``); a direct turn starts when read."""
        if self.direct:
            return
        assert self.run_request is not None
        async with self:
            self.job = await submit_job(
                self.request,
                Submission(
                    key_id=self.key.id,
                    door=self.door,
                    request=request_to_json(self.run_request),
                    key_policy=self.key.policy,
                ),
            )
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
            self._audit_job(finished)
            self.result = result_of(finished)
            return self.result
        finally:
            await self._settle_result()

    async def answer_structured(self, schema: dict[str, Any]) -> RunResult | None:
        """``start`` and ``answer`` for a turn whose answer must match ``schema`` (checked by
        ``structured.check_schema``); the result's text is the value as compact JSON.

        As a job, the job stores the schema and validates and repairs its own answer; directly,
        the same check and one repair run (``jobs/schema_repair.answer_to_schema``) go over the
        runner, usage summed. A mismatch is 422 ``schema_validation_failed`` with ``raw_text``;
        None when the client went away first (the job is cancelled). Settles the ticket."""
        assert self.run_request is not None
        runner = services_of(self.request).runner

        async def run(request: RunRequest, _: str = "") -> RunResult:
            try:
                async with contextlib.aclosing(runner.run(request)) as events:
                    async for event in events:
                        if isinstance(event, RunResult):
                            return event
            except RunError as exc:
                self.facts.error_type = exc.error_type
                raise api_error_of(exc) from None
            raise ApiError("upstream_error", "the upstream ended without an answer")

        try:
            if not self.direct:
                stored = request_to_json(self.run_request, json_schema=schema)
                self.job = await submit_job(
                    self.request, Submission(key_id=self.key.id, door=self.door, request=stored)
                )
                self.message_id = "msg_" + self.job.id.removeprefix("job_")
                finished = await wait_for_caller(self.request, self.job.id)
                if finished is None:
                    return None
                self._audit_job(finished)
                # A failed job spent tokens too (the first run and the repair).
                await self.settle(_usage_of(finished.usage), finished.cost_usd)
                self.result = replace(result_of(finished), text=finished.result_json or "")
                return self.result
            asked = asking_for_schema(self.run_request, schema)
            self.result = await run(asked)
            try:
                total, answer = await answer_to_schema(
                    {"json_schema": schema}, asked, self.result, run
                )
            except SchemaMismatch as exc:
                self.result = exc.result
                self._audit_result(exc.result)
                self.facts.error_type, self.facts.job_status = SCHEMA_VALIDATION_FAILED, "failed"
                raise ApiError(
                    "schema_validation_failed", exc.message, extra={"raw_text": exc.text}
                ) from None
            self.result = replace(total, text=answer["result_json"])
            self._audit_result(self.result)
            return self.result
        finally:
            await self._settle_result()

    def events(self) -> AsyncGenerator[RunEvent | None, None]:
        """TextDeltas then one RunResult; None stands for a quiet moment (send a ping).

        Raises ApiError when the turn fails. Closing the generator early cancels the job.
        """
        # A direct turn reads the runner's events with no generator in between.
        return self._runner_events() if self.direct else self._job_events()

    async def _job_events(self) -> AsyncGenerator[RunEvent | None, None]:
        assert self.job is not None
        services = services_of(self.request)
        jobs = services.jobs
        finished = False
        try:
            async for job_event in jobs.hub.subscribe(
                self.job.id, 0, services.settings.sse_heartbeat_secs
            ):
                if job_event is None:
                    yield None
                elif job_event.type == "chunk":
                    yield TextDelta(str(job_event.data.get("text", "")))
                elif job_event.type == "result":
                    finished = True
                    final = await services.store.jobs.get(self.job.id)
                    if final is None:
                        raise ApiError("not_found", "the job was deleted while it ran")
                    self._audit_job(final)
                    self.result = result_of(final)
                    yield self.result
                    return
            raise _shutting_down()
        finally:
            if not finished:
                await asyncio.shield(jobs.cancel(self.job.id))

    async def _runner_events(self) -> AsyncGenerator[RunEvent | None, None]:
        assert self.run_request is not None
        runner = services_of(self.request).runner
        try:
            async with contextlib.aclosing(runner.run(self.run_request)) as events:
                async for event in events:
                    if isinstance(event, RunResult):
                        self.result = event
                        self._audit_result(event)
                    yield event
        except RunError as exc:
            self.facts.error_type = exc.error_type
            raise api_error_of(exc) from None

    async def stream(self, renderer: StreamRenderer) -> Response:
        """The shared stream driver: wait for the first event (so a turn that fails at once
        answers a real HTTP error), then stream the rest through ``renderer``, ending with
        an error frame in the door's shape if the turn fails midway."""
        events = self.events()
        try:
            async for first in events:
                if first is not None:
                    break
            else:
                raise ApiError("upstream_error", "the run ended without an answer")
        except BaseException:
            await self._close(events)
            raise
        return ClosingStreamingResponse(
            self._drive(renderer, first, events), on_close=lambda: self._close(events)
        )

    async def _drive(
        self,
        renderer: StreamRenderer,
        first: RunEvent,
        events: AsyncGenerator[RunEvent | None, None],
    ) -> AsyncIterator[bytes]:
        # Frames ready at the same moment leave as one body message (one write): the opening
        # with the first event's frame, the rest of the answer with the closing frames.
        sent: list[str] = []
        ready = list(renderer.opening())
        following = events.__anext__
        try:
            event: RunEvent | None = first
            while True:
                if event is None:
                    ready.append(renderer.ping())
                elif isinstance(event, TextDelta):
                    if event.text:
                        sent.append(event.text)
                        ready.append(renderer.text(event.text))
                elif isinstance(event, RunResult):
                    rest = _unsent(event.text, "".join(sent))
                    if rest:  # a backend that sent no (or partial) deltas
                        ready.append(renderer.text(rest))
                    ready += renderer.closing(event)
                    yield b"".join(ready)
                    return
                if ready:
                    yield ready[0] if len(ready) == 1 else b"".join(ready)
                    ready = []
                try:
                    event = await following()
                except StopAsyncIteration:
                    raise ApiError("upstream_error", "the run ended without an answer") from None
        except ApiError as exc:
            ready.append(renderer.error(exc))
            yield b"".join(ready)

    async def _close(self, events: AsyncGenerator[RunEvent | None, None]) -> None:
        await events.aclose()
        await self._settle_result()

    async def _settle_result(self) -> None:
        result = self.result
        await self.settle(
            _usage_of(result.usage) if result else None, result.cost_usd if result else None
        )

    def _audit_job(self, job: JobRecord) -> None:
        facts = self.facts
        facts.job_id = job.id
        facts.job_status = job.status.value
        facts.model = job.model
        facts.add_usage(_usage_of(job.usage), job.cost_usd)
        facts.error_type = job.error_type
        facts.response_bytes = len((job.result or "").encode("utf-8"))

    def _audit_result(self, result: RunResult) -> None:
        facts = self.facts
        facts.model = result.model
        facts.add_usage(_usage_of(result.usage), result.cost_usd)
        facts.job_status = "completed"
        facts.response_bytes = len(result.text.encode("utf-8"))

    # -- the raw pass-through (a backend with ``capabilities.passthrough``) ------------------

    async def upstream(self, opening: Awaitable[T]) -> T:
        """Await an upstream call; a failure settles the ticket and becomes an ApiError."""
        try:
            return await opening
        except BaseException as exc:
            await self.settle()
            if isinstance(exc, RunError):
                self.facts.error_type = exc.error_type
                raise api_error_of(exc) from None
            raise

    async def settle_upstream(
        self, model: str, raw_usage: dict[str, int], *, completed: bool
    ) -> None:
        """Settle with what the upstream reported and say so in the audit row."""
        cost = cost_usd(model, raw_usage)
        usage = _usage_of(raw_usage)
        self.facts.add_usage(usage, cost)
        self.facts.job_status = "completed" if completed else "failed"
        await self.settle(usage, cost)

    def relay(
        self,
        frames: AsyncIterable[bytes],
        error_frame: Callable[[ApiError], bytes],
        on_close: Callable[[], Awaitable[None]],
        **response: Any,
    ) -> Response:
        """Stream ``frames`` (an open upstream stream, maybe translated); a break becomes
        ``error_frame`` in the door's shape; ``on_close`` settles once the stream is done."""

        async def guarded() -> AsyncIterator[bytes]:
            try:
                async for frame in frames:
                    yield frame
            except (RunError, ApiError) as exc:
                if isinstance(exc, RunError):
                    self.facts.error_type = exc.error_type
                    exc = api_error_of(exc)
                yield error_frame(exc)

        return ClosingStreamingResponse(guarded(), on_close=on_close, **response)
