"""Message Batches on the job queue: create, feed, record, cancel, expire, results, clean-up.

A batch's requests wait in the store (``batch_requests``), not in the queue: the feeder keeps
at most ``in_flight`` of each batch queued or running as jobs (door ``batch``), so a batch of
100,000 requests never fills the queue's cap. Those jobs are claimed fairly per key like any
other, and within a key after its other jobs (``store/jobs.py: claim_next``). When one ends
the feeder records its result and feeds the next. Nothing lives only in memory: a periodic
sweep records jobs that ended on another node or before a restart, and every move of a
request is a guarded update, so no request is recorded twice or gets a second job while its
first exists (each job carries the idempotency key ``batch:<batch id>:<seq>``).

The engine knows no Messages format: the door hands in ``validate`` (params at create),
``to_job`` (params -> the job's RunRequest JSON), ``admit`` (limits and budgets per request)
and ``to_message`` / ``to_error`` (a job's outcome in the SDK's result shape).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from ccgate.clock import utcnow
from ccgate.ids import new_id
from ccgate.jobs.requests import request_to_json
from ccgate.jobs.service import JobService, NotAccepting, QueueFull, Submission
from ccgate.runners.base import RunRequest
from ccgate.store import JobRecord, JobStatus, Store
from ccgate.store.batches import BatchRecord, BatchStatus, FedRequest, RequestState

log = structlog.get_logger("ccgate.batches")

BATCH_DOOR = "batch"
CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_RESULTS_PAGE = 1000
# Batches up to this many requests are checked right on the loop (a thread costs more).
_CHECK_ON_LOOP = 1000


class BatchInvalid(ValueError):
    """A create request the engine refuses; the message says which request and why."""


class BatchNotFound(LookupError):
    """No batch of that id belongs to the key."""


class BatchNotEnded(Exception):
    """The operation needs a batch whose processing has ended."""


@dataclass(frozen=True)
class Admitted:
    """A request may run. ``attach`` (if given) is told the id of the job that runs it, or
    None when no job was made after all, so the door can settle what admission reserved."""

    attach: Callable[[str | None], Awaitable[None]] | None = None


@dataclass(frozen=True)
class Refused:
    """A request may not run now: with ``retry_after`` (a rate limit) it is fed again after
    that many seconds; without (a spent budget or quota) it ends ``errored`` with this error."""

    error_type: str
    message: str
    retry_after: float | None = None


@dataclass(frozen=True)
class BatchSettings:
    """The knobs of the batch engine."""

    in_flight: int = 2
    expiry: timedelta = timedelta(hours=24)
    ttl: timedelta = timedelta(days=29)
    max_requests: int = 100_000
    poll_secs: float = 1.0
    sweep_secs: float = 5.0
    # A request taken for feeding that got no job for this long lost its feeder (a crash).
    stale_secs: float = 60.0


@dataclass(frozen=True)
class BatchPage:
    """One page of a key's batches, newest first, as the SDK's list pages them."""

    data: list[BatchRecord]
    has_more: bool

    @property
    def first_id(self) -> str | None:
        """The id of the page's first (newest) batch."""
        return self.data[0].id if self.data else None

    @property
    def last_id(self) -> str | None:
        """The id of the page's last (oldest) batch: the next page's ``after_id``."""
        return self.data[-1].id if self.data else None


Validate = Callable[[dict[str, Any]], dict[str, Any]]
ToJob = Callable[[dict[str, Any]], dict[str, Any]]
Admit = Callable[[str, dict[str, Any]], Awaitable[Admitted | Refused]]
ToMessage = Callable[[JobRecord], dict[str, Any]]
ToError = Callable[[str, str], dict[str, Any]]


@dataclass(frozen=True)
class BatchHooks:
    """What a door hands the engine (``BatchService.use``): its wire format's callbacks."""

    validate: Validate
    to_job: ToJob
    admit: Admit
    to_message: ToMessage
    to_error: ToError


def _accept(params: dict[str, Any]) -> dict[str, Any]:
    return params


def plain_job(params: dict[str, Any]) -> dict[str, Any]:
    """A default ``to_job`` (tests): the last message's text as one prompt to the model."""
    content = params["messages"][-1]["content"]
    if not isinstance(content, str):
        content = "".join(b.get("text", "") for b in content)
    return request_to_json(RunRequest.from_text(content, str(params["model"])))


async def admit_all(_key_id: str, _params: dict[str, Any]) -> Admitted | Refused:
    """A default ``admit`` (tests): every request may run."""
    return Admitted()


def plain_message(job: JobRecord) -> dict[str, Any]:
    """A default ``to_message`` (tests): a minimal Messages-shaped answer of the job."""
    usage = job.usage or {}
    return {
        "id": f"msg_{job.id.removeprefix('job_')}",
        "type": "message",
        "role": "assistant",
        "model": job.model,
        "content": [{"type": "text", "text": job.result or ""}],
        "stop_reason": job.stop_reason or "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": int(usage.get("input_tokens", 0)),
            "output_tokens": int(usage.get("output_tokens", 0)),
        },
    }


def plain_error(error_type: str, message: str) -> dict[str, Any]:
    """A default ``to_error``: ccgate's own error type and message."""
    return {"type": error_type, "message": message}


class BatchService:
    """Message Batches of every key, fed to ``jobs`` a few requests at a time."""

    def __init__(
        self,
        store: Store,
        jobs: JobService,
        settings: BatchSettings | None = None,
        *,
        validate: Validate = _accept,
        to_job: ToJob = plain_job,
        admit: Admit = admit_all,
        to_message: ToMessage = plain_message,
        to_error: ToError = plain_error,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.settings = settings or BatchSettings()
        self.validate = validate
        self.to_job = to_job
        self.admit = admit
        self.to_message = to_message
        self.to_error = to_error
        self.clock = clock
        self._wake = asyncio.Event()
        self._feeder: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # Batches whose key's rate limit refused a request: not fed before this (monotonic);
        # only a throttle, so losing it in a restart costs one more refused admission.
        self._paused: dict[str, float] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def use(self, hooks: BatchHooks) -> None:
        """Take a door's callbacks (before ``start``)."""
        self.validate = hooks.validate
        self.to_job = hooks.to_job
        self.admit = hooks.admit
        self.to_message = hooks.to_message
        self.to_error = hooks.to_error

    async def start(self) -> None:
        """Listen for ended jobs, register the clean-up and resume every open batch."""
        self.jobs.on_finished.append(self._job_finished)
        self.jobs.cleanups.append(("batches", self.clean_up))
        self._feeder = asyncio.create_task(self._feed_loop(), name="ccgate-batch-feeder")

    async def stop(self) -> None:
        """Stop feeding; what is in flight stays in the store for the next start."""
        with contextlib.suppress(ValueError):
            self.jobs.on_finished.remove(self._job_finished)
        with contextlib.suppress(ValueError):
            self.jobs.cleanups.remove(("batches", self.clean_up))
        tasks = [t for t in (self._feeder, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._feeder = None

    # -- what the door uses ------------------------------------------------------------

    async def create(
        self, key_id: str, requests: Sequence[Any], *, validate: Validate | None = None
    ) -> BatchRecord:
        """Validate (with ``validate``, else the door's) and store a batch of ``{"custom_id",
        "params"}`` requests; it is stored before this returns and fed from then on. Raises
        BatchInvalid. A big batch is checked in a worker thread and stored on a connection of
        its own, so other requests are served meanwhile."""
        most = self.settings.max_requests
        if not 1 <= len(requests) <= most:
            raise BatchInvalid(
                f"a batch holds 1 to {most:,} requests; this one has {len(requests):,}"
            )
        check = validate or self.validate
        if len(requests) > _CHECK_ON_LOOP:
            rows = await asyncio.to_thread(_checked_rows, requests, check)
        else:
            rows = _checked_rows(requests, check)
        now = self.clock()
        batch = await self.store.batches.insert(
            batch_id=new_id("msgbatch"),
            key_id=key_id,
            now=now,
            expires_at=now + self.settings.expiry,
            requests=rows,
        )
        log.info("batch_created", batch_id=batch.id, requests=len(rows))
        self._wake.set()
        return batch

    async def get(self, batch_id: str, key_id: str) -> BatchRecord:
        """The key's batch with its counts; BatchNotFound otherwise."""
        batch = await self.store.batches.get(batch_id, key_id)
        if batch is None:
            raise BatchNotFound(batch_id)
        return batch

    async def page(
        self,
        key_id: str,
        *,
        before_id: str | None = None,
        after_id: str | None = None,
        limit: int = 20,
    ) -> BatchPage:
        """A page of the key's batches, newest first (``after_id``: older ones,
        ``before_id``: newer ones)."""
        data, more = await self.store.batches.page(
            key_id, before_id=before_id, after_id=after_id, limit=limit
        )
        return BatchPage(data, more)

    async def cancel(self, batch_id: str, key_id: str) -> BatchRecord:
        """Cancel an in-progress batch: pending requests end ``canceled`` at once, running
        ones are cancelled (one that finishes first keeps its result); the batch ends when
        nothing is in flight. A batch already canceling or ended is returned as it is."""
        now = self.clock()
        in_flight = await self.store.batches.cancel(batch_id, key_id, now)
        if in_flight is not None:
            log.info("batch_canceling", batch_id=batch_id, in_flight=len(in_flight))
            await self._cancel_jobs(in_flight, "the batch was canceled")
            await self.store.batches.end_if_done(batch_id, self.clock())
            self._wake.set()
        return await self.get(batch_id, key_id)

    async def delete(self, batch_id: str, key_id: str) -> None:
        """Delete an ended batch and its results; BatchNotEnded while it still runs."""
        batch = await self.get(batch_id, key_id)
        if batch.status is not BatchStatus.ENDED:
            raise BatchNotEnded(
                f"batch {batch_id} is still {batch.status.value}; cancel it and delete it "
                "once its processing_status is ended"
            )
        if not await self.store.batches.mark_deleted(batch_id, key_id, self.clock()):
            raise BatchNotFound(batch_id)
        self._in_background(self.store.batches.purge(batch_id))

    async def results(self, batch_id: str, key_id: str) -> AsyncIterator[dict[str, Any]]:
        """The ended batch's results as JSONL-ready dicts in the SDK's shape, streamed page
        by page in request order. BatchNotFound, or BatchNotEnded while it runs."""
        batch = await self.get(batch_id, key_id)
        if batch.status is not BatchStatus.ENDED:
            raise BatchNotEnded(
                f"batch {batch_id} is still {batch.status.value}; its results are ready "
                "once its processing_status is ended"
            )
        return self._results(batch_id)

    async def _results(self, batch_id: str) -> AsyncIterator[dict[str, Any]]:
        after = -1
        while rows := await self.store.batches.results_after(batch_id, after, _RESULTS_PAGE):
            for row in rows:
                result = row.result if row.result is not None else {"type": row.state.value}
                yield {"custom_id": row.custom_id, "result": result}
            after = rows[-1].seq

    async def clean_up(self, now: datetime) -> int:
        """Remove deleted batches and ended ones older than the TTL; return how many."""
        removed = 0
        for batch_id in await self.store.batches.to_purge(now - self.settings.ttl):
            await self.store.batches.purge(batch_id)
            removed += 1
        return removed

    # -- feeding -----------------------------------------------------------------------

    async def _feed_loop(self) -> None:
        next_sweep = 0.0
        while True:
            self._wake.clear()
            try:
                if time.monotonic() >= next_sweep:
                    await self.sweep()
                    next_sweep = time.monotonic() + self.settings.sweep_secs
                await self.feed_once()
            except Exception:
                log.exception("batch_feed_failed")
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands
            # as the wake-up does, and stop() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_secs):
                    await self._wake.wait()

    async def feed_once(self) -> None:
        """One pass over every open batch: expire it when due, top up its jobs to the
        in-flight bound, and end it when nothing is left to do."""
        for batch in await self.store.batches.open_batches():
            if batch.expires_at <= self.clock():
                await self._expire(batch.id)
                continue
            if batch.status is BatchStatus.IN_PROGRESS:
                await self._feed(batch)
            if await self.store.batches.end_if_done(batch.id, self.clock()):
                self._paused.pop(batch.id, None)
                log.info("batch_ended", batch_id=batch.id)

    async def _feed(self, batch: BatchRecord) -> None:
        if self._paused.get(batch.id, 0.0) > time.monotonic():
            return
        self._paused.pop(batch.id, None)
        taken = await self.store.batches.take_pending(
            batch.id, in_flight=self.settings.in_flight, now=self.clock()
        )
        for request in taken:
            if not await self._submit(batch, request):
                # The queue is full or the node is stopping: the rest wait for a later pass.
                for rest in taken[taken.index(request) + 1 :]:
                    await self.store.batches.put_back(rest.batch_id, rest.seq, self.clock())
                return

    async def _submit(self, batch: BatchRecord, request: FedRequest) -> bool:
        """Admit one taken request and make it a job; False when the queue cannot take it."""
        store = self.store.batches
        try:
            decision = await self.admit(batch.key_id, request.params)
        except Exception:
            log.exception("batch_admit_failed", batch_id=batch.id)
            await store.put_back(request.batch_id, request.seq, self.clock())
            return False
        if isinstance(decision, Refused):
            if decision.retry_after is not None:
                later = self.clock() + timedelta(seconds=decision.retry_after)
                await store.put_back(request.batch_id, request.seq, self.clock(), later)
                # The key's limit holds for its other requests too: feed none before then.
                self._paused[batch.id] = time.monotonic() + decision.retry_after
            else:
                error = self._errored(decision.error_type, decision.message)
                await store.end_unfed(
                    request.batch_id, request.seq, RequestState.ERRORED, error, self.clock()
                )
            return True
        job: JobRecord | None = None
        try:
            job = await self._submit_job(batch, request)
        except _QueueBusy:
            return False
        finally:
            if decision.attach is not None:
                await decision.attach(job.id if job else None)
        return True

    async def _submit_job(self, batch: BatchRecord, request: FedRequest) -> JobRecord | None:
        store = self.store.batches
        try:
            run = self.to_job(request.params)
        except ValueError as exc:
            error = self._errored("invalid_request", str(exc))
            await store.end_unfed(
                request.batch_id, request.seq, RequestState.ERRORED, error, self.clock()
            )
            return None
        try:
            job, _ = await self.jobs.submit(
                Submission(
                    key_id=batch.key_id,
                    door=BATCH_DOOR,
                    request=run,
                    metadata={"batch_id": batch.id, "batch_seq": request.seq},
                    # A second feed of this request finds the job of the first.
                    idempotency_key=_idempotency_key(batch.id, request.seq),
                )
            )
        except (QueueFull, NotAccepting):
            await store.put_back(request.batch_id, request.seq, self.clock())
            raise _QueueBusy from None
        if not await store.attach_job(request.batch_id, request.seq, job.id, self.clock()):
            # Canceled or expired while it was being submitted.
            await self.jobs.cancel(job.id, "the batch was canceled", webhook=False)
            return job
        if job.status.terminal:
            await self._record(job)
        else:
            ended = await self.store.jobs.get(job.id)
            if ended is not None and ended.status.terminal:
                await self._record(ended)
        return job

    # -- recording ---------------------------------------------------------------------

    def _job_finished(self, job: JobRecord) -> None:
        if job.door == BATCH_DOOR:
            self._in_background(self._record(job))

    async def _record(self, job: JobRecord) -> bool:
        """Record a batch job's outcome on its request (once); wake the feeder."""
        meta = job.metadata or {}
        where: tuple[str, int] | None = None
        if "batch_id" in meta and "batch_seq" in meta:
            where = (str(meta["batch_id"]), int(meta["batch_seq"]))
        else:
            where = await self.store.batches.by_job(job.id)
        if where is None:
            return False
        if job.status is JobStatus.COMPLETED:
            state = RequestState.SUCCEEDED
            result: dict[str, Any] | None = {
                "type": "succeeded",
                "message": self.to_message(job),
            }
        elif job.status is JobStatus.FAILED:
            state = RequestState.ERRORED
            result = self._errored(job.error_type or "api_error", job.error_message or "")
        else:
            state, result = RequestState.CANCELED, None
        recorded = await self.store.batches.record(
            where[0], where[1], job_id=job.id, state=state, result=result, now=self.clock()
        )
        if recorded:
            self._wake.set()
        return recorded

    def _errored(self, error_type: str, message: str) -> dict[str, Any]:
        return {
            "type": "errored",
            "error": {"type": "error", "error": self.to_error(error_type, message)},
        }

    async def sweep(self) -> int:
        """Record requests whose job ended unrecorded (another node, a restart), re-feed
        those whose job row is gone or whose feeder died before submitting; return how many
        it put right."""
        now = self.clock()
        fixed = 0
        stale = now - timedelta(seconds=self.settings.stale_secs)
        for row in await self.store.batches.unrecorded(stale_before=stale):
            if row.job_id is None:
                fixed += await self._find_job(row.batch_id, row.key_id, row.seq, row.stale)
                continue
            job = await self.store.jobs.get(row.job_id) if row.job_exists else None
            if job is None:
                fixed += await self.store.batches.forget_job(row.batch_id, row.seq, row.job_id, now)
            elif job.status.terminal:
                fixed += await self._record(job)
        if fixed:
            log.info("batch_requests_recovered", count=fixed)
            self._wake.set()
        return fixed

    async def _find_job(self, batch_id: str, key_id: str, seq: int, stale: bool) -> bool:
        """A request taken for feeding without a noted job: note the job its feeder made
        before it stopped (recording it if it ended), or, once stale, feed it again."""
        job = await self.store.jobs.by_idempotency_key(key_id, _idempotency_key(batch_id, seq))
        if job is None:
            return stale and await self.store.batches.put_back(batch_id, seq, self.clock())
        if job.status.terminal:
            return await self._record(job)
        return await self.store.batches.attach_job(batch_id, seq, job.id, self.clock())

    async def _expire(self, batch_id: str) -> None:
        in_flight = await self.store.batches.expire(batch_id, self.clock())
        if in_flight is None:
            return
        log.info("batch_expired", batch_id=batch_id, in_flight=len(in_flight))
        await self._cancel_jobs(in_flight, "the batch expired")

    async def _cancel_jobs(self, job_ids: Sequence[str], message: str) -> None:
        for job_id in job_ids:
            cancelled = await self.jobs.cancel(job_id, message, webhook=False)
            if cancelled is not None:
                await self._record(cancelled)

    def _in_background(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _checked_rows(requests: Sequence[Any], validate: Validate) -> list[tuple[str, dict[str, Any]]]:
    """``(custom_id, params)`` of every request, each checked; BatchInvalid names the first
    bad one by its index and custom_id."""
    rows: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for i, item in enumerate(requests):
        where = f"requests[{i}]"
        if not isinstance(item, Mapping):
            raise BatchInvalid(f"{where} must be an object with custom_id and params")
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
            raise BatchInvalid(
                f"{where}.custom_id {custom_id!r} must be 1 to 64 letters, digits, '_' or '-'"
            )
        if custom_id in seen:
            raise BatchInvalid(
                f"{where}.custom_id {custom_id!r} is used more than once; each custom_id "
                "must be unique within its batch"
            )
        seen.add(custom_id)
        params = item.get("params")
        if not isinstance(params, Mapping):
            raise BatchInvalid(f"{where}.params (custom_id {custom_id!r}) must be an object")
        try:
            rows.append((custom_id, validate(dict(params))))
        except BatchInvalid:
            raise
        except ValueError as exc:
            raise BatchInvalid(f"{where}.params (custom_id {custom_id!r}): {exc}") from exc
    return rows


def _idempotency_key(batch_id: str, seq: int) -> str:
    return f"batch:{batch_id}:{seq}"


class _QueueBusy(Exception):
    """The queue took no job this pass (full, or the node is stopping)."""
