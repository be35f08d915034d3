"""The job queue: submit, run under a concurrency cap, stream, wait, cancel, shut down."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from ccgate import metrics, tracing
from ccgate.clock import utcnow
from ccgate.events import JobEventHub
from ccgate.ids import new_id
from ccgate.jobs.requests import request_from_json
from ccgate.jobs.revocation import KEY_REVOKED, KEY_UNUSABLE, WEBHOOK_DROPPED, end_work_of
from ccgate.jobs.schema_repair import SCHEMA_VALIDATION_FAILED, SchemaMismatch, answer_to_schema
from ccgate.jobs.windows import UNKNOWN_RESET, PlanGate, WindowsClosed
from ccgate.jsonanswer import answer_read_as_json, read_json_answer_async
from ccgate.policy import KeyPolicy
from ccgate.runners.base import RunError, Runner, RunRequest, RunResult, TextDelta
from ccgate.runners.plan_windows import WindowClosed
from ccgate.store import JobEvent, JobRecord, JobStatus, Store
from ccgate.store.engine import Operation
from ccgate.store.jobs import QueueAtCapacity
from ccgate.structured import schema_of

log = structlog.get_logger("ccgate.jobs")

_POLL_SECS = 1.0
# A waiter on a job running elsewhere is woken by its events; it re-reads the job this often
# regardless, in case a wake-up was lost.
_WAIT_RECHECK_SECS = 5.0
# Where a job's request notes that its caller waits synchronously (never held for a window).
SYNC_CALLER = "sync_caller"


class QueueFull(Exception):
    """The queue holds as many jobs as it may; try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("the job queue is full")
        self.retry_after = retry_after


class NotAccepting(Exception):
    """The node is shutting down and takes no new jobs."""


class IdempotencyConflict(Exception):
    """An Idempotency-Key was reused with a different request body."""


@dataclass(frozen=True)
class QueueLimits:
    """The knobs of one queue."""

    concurrency: int = 2
    queue_size: int = 100
    max_attempts: int = 2
    lease_secs: float = 30.0
    shutdown_grace_secs: float = 30.0
    job_ttl_hours: float = 0.0
    cleanup_interval_secs: float = 300.0


@dataclass(frozen=True)
class Submission:
    """What a door asks to run, as the queue stores it."""

    key_id: str | None
    door: str
    request: dict[str, Any]
    metadata: dict[str, Any] | None = None
    callback_url: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    session_id: str | None = None
    # False for a caller that waits for the answer: a closed plan window refuses it (429)
    # instead of holding it in the queue until the window resets.
    waits_for_window: bool = True
    # The key's policy as the request was admitted under it (None: read the key again).
    key_policy: KeyPolicy | None = None


class JobService:
    """Owns the life of every job this node runs; any door submits through it."""

    def __init__(
        self,
        store: Store,
        runner: Runner,
        limits: QueueLimits,
        hub: JobEventHub | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.runner = runner
        self.limits = limits
        self.hub = hub or JobEventHub(store)
        self.clock = clock
        self.node_id = f"{socket.gethostname()}-{os.getpid()}-{new_id('n')[2:10]}"
        self.accepting = False
        self.on_finished: list[Callable[[JobRecord], None]] = []
        # Awaited after a job's end is stored and before anyone waiting is told, so a caller
        # that gets the answer already sees what these did (e.g. its session's new turn).
        self.before_announce: list[Callable[[JobRecord], Awaitable[None]]] = []
        # Store operations on the ended job (e.g. its session's new turn) written in the very
        # transaction that ends it: one write instead of two before the caller is told.
        self.in_ending: list[Callable[[JobRecord], Operation[None] | None]] = []
        # Expiry sweeps run by the cleanup loop: (what, delete everything expired at ``now``).
        self.cleanups: list[tuple[str, Callable[[datetime], Awaitable[int]]]] = []
        self._wake = asyncio.Event()
        self._slots_taken = 0
        self._done: dict[str, asyncio.Future[JobRecord | None]] = {}
        self._running: dict[str, asyncio.Task[JobRecord | None]] = {}
        self._requeue_requested: set[str] = set()
        self._cancelled_here: set[str] = set()
        # The timing of the request that submitted each job, while that request lasts.
        self._timings: weakref.WeakValueDictionary[str, metrics.RequestTiming] = (
            weakref.WeakValueDictionary()
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._draining: asyncio.Task[None] | None = None
        self._queue_seen_empty = False
        self.plan = PlanGate(store, clock)

    @property
    def running(self) -> int:
        """How many jobs this node is running right now."""
        return len(self._running)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Recover interrupted jobs and sweep away work of revoked keys, then start
        dispatching, lease upkeep and cleanup."""
        await self.recover(orphans_of_any_node=self.store.db.dialect == "sqlite")
        await self.end_unusable_work()
        await self.plan.refresh()
        await self.hub.start()
        self.accepting = True
        self._tasks = [
            asyncio.create_task(self._dispatch(), name="ccgate-dispatch"),
            asyncio.create_task(self._keep_leases(), name="ccgate-leases"),
            asyncio.create_task(self._clean_up(), name="ccgate-cleanup"),
        ]

    def begin_shutdown(self) -> None:
        """Refuse new jobs from now on (503), end event streams, and start the grace period
        after which running jobs are stopped and put back in the queue."""
        if self._draining is not None:
            return
        self.accepting = False
        self._wake.set()
        self.hub.close_streams()
        self._draining = asyncio.create_task(self._drain(), name="ccgate-drain")

    async def _drain(self) -> None:
        running = list(self._running.values())
        if running:
            await asyncio.wait(running, timeout=self.limits.shutdown_grace_secs)
        for job_id, task in list(self._running.items()):
            self._requeue_requested.add(job_id)
            task.cancel()
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=10)

    async def stop(self) -> None:
        """Stop taking jobs, let running ones finish within the grace, requeue the rest."""
        self.begin_shutdown()
        assert self._draining is not None
        await self._draining
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.hub.stop()
        await self.runner.aclose()

    # -- the API doors use -------------------------------------------------------------

    async def submit(self, submission: Submission) -> tuple[JobRecord, bool]:
        """Queue a job; return it and whether it is new (False: an idempotent replay).

        Raises QueueFull, NotAccepting or IdempotencyConflict. When this node has a free
        slot and nothing waits, the job is stored already claimed and starts at once. While
        a plan window (or the key's share of it) is used up, a synchronous submission raises
        WindowsClosed and an asynchronous one is queued with ``retry_at`` at the reset.
        """
        if not self.accepting:
            raise NotAccepting
        if submission.idempotency_key is not None and submission.key_id is not None:
            earlier = await self.replay_of(
                submission.key_id, submission.idempotency_key, submission.request_hash
            )
            if earlier is not None:
                return earlier, False
        hold_until: datetime | None = None
        try:
            await self.plan.check(submission.key_id, submission.key_policy)
        except WindowsClosed as closed:
            if not submission.waits_for_window:
                raise
            hold_until = closed.until
        request = (
            submission.request
            if submission.waits_for_window
            else {**submission.request, SYNC_CALLER: True}
        )
        parent = tracing.traceparent()
        if parent is not None:  # whichever node runs the job continues the request's trace
            request = {**request, tracing.TRACEPARENT: parent}
        reserve = hold_until is None and self._slots_taken < self.limits.concurrency
        if reserve:
            self._slots_taken += 1
        now = self.clock()
        job: JobRecord | None = None
        try:
            job = await self.store.jobs.insert(
                job_id=new_id("job"),
                key_id=submission.key_id,
                door=submission.door,
                model=str(submission.request["model"]),
                request=request,
                metadata=submission.metadata,
                now=now,
                callback_url=submission.callback_url,
                idempotency_key=submission.idempotency_key,
                request_hash=submission.request_hash,
                max_queued=self.limits.queue_size,
                session_id=submission.session_id,
                retry_at=hold_until,
                claim_for=self.node_id if reserve else None,
                lease_until=now + timedelta(seconds=self.limits.lease_secs),
            )
        except QueueAtCapacity:
            raise QueueFull(retry_after=self._retry_after_hint()) from None
        finally:
            if reserve and not job_started(job):
                self._slots_taken -= 1
        if job is None:  # lost an idempotency race to a concurrent twin
            return await self._idempotent_twin(submission), False
        timing = metrics.current_timing()
        if timing is not None:
            self._timings[job.id] = timing
        if job_started(job):
            self._launch(job)
        else:
            self._queue_seen_empty = False
            # With every slot busy, the next run to end wakes the dispatcher: not each submit.
            if self._slots_taken < self.limits.concurrency:
                self._wake.set()
        return job, True

    async def replay_of(
        self, key_id: str, idempotency_key: str, request_hash: str | None
    ) -> JobRecord | None:
        """The key's job submitted earlier under ``idempotency_key`` (a retry gets it back
        without being admitted again), or None; IdempotencyConflict for another body."""
        earlier = await self.store.jobs.by_idempotency_key(key_id, idempotency_key)
        if earlier is not None and earlier.request_hash != request_hash:
            raise IdempotencyConflict
        return earlier

    async def _idempotent_twin(self, submission: Submission) -> JobRecord:
        assert submission.key_id is not None
        assert submission.idempotency_key is not None
        twin = await self.store.jobs.by_idempotency_key(
            submission.key_id, submission.idempotency_key
        )
        assert twin is not None
        if twin.request_hash != submission.request_hash:
            raise IdempotencyConflict
        return twin

    async def wait(self, job_id: str) -> JobRecord:
        """Return the job once it is terminal, whichever node ran it.

        Raises NotAccepting when this node is shutting down and the job is not running
        here: it would only end after the restart.
        """
        if job_id in self._running:
            # Running here: its task hands over the ended record, no store read and no
            # wake-up per event; None (requeued, held for a window) falls through to the store.
            final = await asyncio.shield(self._done_future(job_id))
            if final is not None:
                return final
        async with self.hub.watching(job_id):
            while True:
                done = self._done_future(job_id)
                # Woken by the job's end here, or its events heard from the node running it
                # (the notifier, else the hub's store poll); the timeout is a last resort.
                changed = self.hub.changed(job_id)
                if job_id not in self._running:
                    job = await self.store.jobs.get(job_id)
                    if job is None or job.status.terminal:
                        assert job is not None, f"job {job_id} vanished while waited on"
                        self._forget_waiter(job_id, done)
                        return job
                    if not self.accepting:
                        self._forget_waiter(job_id, done)
                        raise NotAccepting
                woken: asyncio.Future[Any] = asyncio.ensure_future(changed.wait())
                ended: asyncio.Future[Any] = asyncio.shield(done)
                try:
                    await asyncio.wait(
                        {woken, ended},
                        timeout=_WAIT_RECHECK_SECS,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    woken.cancel()
                if done.done() and (final := done.result()) is not None:
                    return final

    async def cancel(
        self, job_id: str, message: str = "the job was cancelled", *, webhook: bool = True
    ) -> JobRecord | None:
        """Cancel a queued or processing job: return it cancelled, or None if it had ended.

        A queued job never starts; a running one has its process group stopped.
        ``webhook=False`` ends it without announcing it to its callback URL.
        """
        ended = await self._end(
            job_id,
            JobStatus.CANCELLED,
            error_type="cancelled",
            error_message=message,
            webhook=webhook,
        )
        task = self._running.get(job_id)
        if ended is not None and task is not None:
            self._cancelled_here.add(job_id)
            task.cancel()
        return ended

    async def end_work_of(self, key_ids: list[str], message: str = KEY_REVOKED) -> int:
        """Cancel every queued or running job of these keys (their keys were just revoked)
        without webhooks, and drop their pending deliveries; return how many jobs ended."""
        return await end_work_of(self.store, key_ids, message=message, cancel=self._cancel_quietly)

    async def end_unusable_work(self) -> int:
        """Sweep away work of keys revoked or expired elsewhere (another node, the CLI): their
        queued jobs (and running ones of revoked keys) are cancelled and the pending webhooks
        of revoked keys dropped. Such jobs are never claimed meanwhile."""
        ended = 0
        for job_id in await self.store.jobs.unusable_work(self.clock()):
            ended += await self._cancel_quietly(job_id, KEY_UNUSABLE) is not None
        await self.store.webhooks.drop_pending(WEBHOOK_DROPPED)
        if ended:
            log.info("unusable_work_cancelled", jobs=ended)
        return ended

    async def _cancel_quietly(self, job_id: str, message: str) -> JobRecord | None:
        return await self.cancel(job_id, message, webhook=False)

    def _retry_after_hint(self) -> int:
        return max(1, min(60, self.limits.queue_size // max(1, self.limits.concurrency)))

    def _done_future(self, job_id: str) -> asyncio.Future[JobRecord | None]:
        future = self._done.get(job_id)
        if future is None:
            future = self._done[job_id] = asyncio.get_running_loop().create_future()
        return future

    def _forget_waiter(self, job_id: str, future: asyncio.Future[JobRecord | None]) -> None:
        # A job that ended on another node is never announced here: drop its future.
        if self._done.get(job_id) is future and not future.done():
            del self._done[job_id]

    def _announce(self, job_id: str, record: JobRecord | None) -> None:
        """Hand the final record (None: look it up) to whoever waits on the job."""
        future = self._done.pop(job_id, None)
        if future is not None and not future.done():
            future.set_result(record)

    async def _end(
        self,
        job_id: str,
        to: JobStatus,
        *,
        lease_expired_before: datetime | None = None,
        known: JobRecord | None = None,
        **values: Any,
    ) -> JobRecord | None:
        """End a job with its last events and closing event in one transaction; ``known``
        is the job as this node runs it (the ended record is built from it, not read back)."""
        with tracing.span("ccgate.settle", job_id=job_id, status=to.value):
            return await self._settle(
                job_id, to, lease_expired_before=lease_expired_before, known=known, **values
            )

    async def _settle(
        self,
        job_id: str,
        to: JobStatus,
        *,
        lease_expired_before: datetime | None,
        known: JobRecord | None,
        **values: Any,
    ) -> JobRecord | None:
        pending, closing_seq = self.hub.seal(job_id)
        ended = await self.store.jobs.finish(
            job_id,
            to,
            now=self.clock(),
            pending=pending,
            closing_seq=closing_seq,
            lease_expired_before=lease_expired_before,
            known=known,
            also=self.in_ending,
            **values,
        )
        if ended is None:
            # Someone else ended it first; keep the text our subscribers already saw.
            await self.store.events.append(pending)
            self.hub.notify(job_id)
            return None
        record, closing = ended
        for hook in self.before_announce:
            try:
                await hook(record)
            except Exception:
                log.exception("job_end_hook_failed", job_id=job_id)
        self.hub.end(job_id, closing)
        self._announce(job_id, record)
        for callback in self.on_finished:
            callback(record)
        return record

    # -- running -----------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Claim queued jobs while slots are free; sleep until woken or the poll interval.

        A slot freeing up only triggers a claim when the queue was not last seen empty; jobs
        queued by other nodes are found by the poll.
        """
        while self.accepting:
            self._wake.clear()
            while (
                self.accepting
                and self._slots_taken < self.limits.concurrency
                and not self._queue_seen_empty
            ):
                self._slots_taken += 1
                job = await self._claim()
                if job is None:
                    self._slots_taken -= 1
                    self._queue_seen_empty = True
                    break
                self._launch(job)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _POLL_SECS)
                continue
            self._queue_seen_empty = False  # the poll: look again, whatever we saw

    def _launch(self, job: JobRecord) -> None:
        """Run a claimed job in its own task; its slot is already taken."""
        task = asyncio.create_task(self._run(job), name=f"ccgate-run-{job.id}")
        self._running[job.id] = task

        def finished(done: asyncio.Task[JobRecord | None]) -> None:
            self._running.pop(job.id, None)
            self._cancelled_here.discard(job.id)
            self._slots_taken -= 1
            self._wake.set()
            record = None if done.cancelled() or done.exception() else done.result()
            self._announce(job.id, record)

        task.add_done_callback(finished)

    async def _claim(self) -> JobRecord | None:
        now = self.clock()
        try:
            closed_until = self.plan.closed_until()
            if closed_until is not None:
                # A window another run saw close: hold the queue until it resets.
                await self.store.jobs.hold_queued(closed_until)
                return None
            return await self.store.jobs.claim_next(
                owner=self.node_id,
                now=now,
                lease_until=now + timedelta(seconds=self.limits.lease_secs),
            )
        except Exception:
            log.exception("claim_failed")
            await asyncio.sleep(_POLL_SECS)
            return None

    async def _run(self, job: JobRecord) -> JobRecord | None:
        """Run the job in its request's trace (its log lines carry the trace id)."""
        parent = job.request.get(tracing.TRACEPARENT)
        trace_id = tracing.trace_id_of(parent)
        bound = {"trace_id": trace_id} if trace_id else {}
        with tracing.continued(parent), structlog.contextvars.bound_contextvars(**bound):
            tracing.span_since(
                "ccgate.queue",
                int(job.created_at.timestamp() * 1e9),
                job_id=job.id,
                attempt=job.attempts,
            )
            return await self._run_traced(job)

    async def _run_traced(self, job: JobRecord) -> JobRecord | None:
        """Run the job, streaming its events; store its outcome and return the final job."""
        started = time.monotonic()
        self._time_for_submitter(job)
        try:
            # A job that ran before (a crash, a shutdown) has events already: continue after
            # their ids and drop their text, so a replay holds only this attempt's answer.
            earlier = 0
            if not _fresh(job):
                earlier = (await self.store.events.last_seq([job.id])).get(job.id, 0)
                if earlier:
                    await self.store.events.drop_chunks(job.id)
            self.hub.begin(job.id, next_seq=earlier + 1)
            self.hub.publish(
                job.id,
                "status",
                {"status": "processing", "attempt": job.attempts, "restarted": earlier > 0},
            )
            result = await self._stream(job)
            await self._observe(job, result.plan_windows)
            if schema_of(job.request) is not None:
                result, answer = await self._answer_to_schema(job, result, started)
            else:
                answer = await _read_answer(job, _storable(result.text))
        except asyncio.CancelledError:
            await self._after_cancel(job)
            return None
        except WindowClosed as exc:
            await self._observe(job, exc.windows)
            await self.store.jobs.hold_queued(self._reset_of(exc))
            if not job.request.get(SYNC_CALLER) and job.window_retries < 1:
                await self._hold_for_window(job, exc)
                return None
            log.info("job_failed", job_id=job.id, error_type=exc.error_type)
            message = (
                exc.message
                if not job.window_retries
                else (
                    "the plan's usage window closed again after the job was retried once: "
                    + exc.message
                )
            )
            return await self._end(
                job.id,
                JobStatus.FAILED,
                known=job,
                error_type=exc.error_type,
                error_message=_storable(message),
                retry_after=exc.retry_after,
                duration_ms=_elapsed_ms(started),
            )
        except SchemaMismatch as exc:
            log.info("job_failed", job_id=job.id, error_type=SCHEMA_VALIDATION_FAILED)
            return await self._end(
                job.id,
                JobStatus.FAILED,
                known=job,
                error_type=SCHEMA_VALIDATION_FAILED,
                error_message=_storable(exc.message),
                # The raw answer stays readable: `result`, with the reason as its parse error.
                result=_storable(exc.text),
                result_parse_error=_storable(exc.error),
                usage=exc.result.usage,
                cost_usd=exc.result.cost_usd,
                duration_ms=_elapsed_ms(started),
                model=exc.result.model or job.model,
            )
        except RunError as exc:
            log.info("job_failed", job_id=job.id, error_type=exc.error_type)
            return await self._end(
                job.id,
                JobStatus.FAILED,
                known=job,
                error_type=exc.error_type,
                error_message=_storable(exc.message),
                retry_after=exc.retry_after,
                duration_ms=_elapsed_ms(started),
            )
        except Exception as exc:
            log.exception("run_crashed", job_id=job.id)
            return await self._end(
                job.id,
                JobStatus.FAILED,
                known=job,
                error_type="internal_error",
                error_message=f"ccgate failed to run the job: {type(exc).__name__}",
                duration_ms=_elapsed_ms(started),
            )
        if result.warning:
            log.info("plan_window_warning", job_id=job.id, warning=result.warning)
        return await self._end(
            job.id,
            JobStatus.COMPLETED,
            known=job,
            result=_storable(result.text),
            usage=result.usage,
            cost_usd=result.cost_usd,
            stop_reason=result.stop_reason,
            duration_ms=_elapsed_ms(started),
            model=result.model or job.model,
            **answer,
        )

    def _time_for_submitter(self, job: JobRecord) -> None:
        """Observe the job's queue wait; its runner time counts as waiting for the request
        that submitted it (while that request lasts)."""
        waited = ((job.started_at or self.clock()) - job.created_at).total_seconds()
        metrics.observe_queue_wait(job.door, waited)
        timing = self._timings.pop(job.id, None) or metrics.RequestTiming(job.door)
        timing.waited_secs += max(0.0, waited)
        metrics.attach_timing(timing)

    async def _observe(self, job: JobRecord, windows: Any) -> None:
        try:
            await self.plan.observe(windows, job.key_id)
        except Exception:
            log.exception("plan_windows_not_recorded", job_id=job.id)

    def _reset_of(self, exc: WindowClosed) -> datetime:
        return exc.resets_at or (self.clock() + UNKNOWN_RESET)

    async def _hold_for_window(self, job: JobRecord, exc: WindowClosed) -> None:
        """Put a job whose window closed mid-run back in the queue until the reset, once;
        every other queued job is held until then too."""
        until = self._reset_of(exc)
        pending, _ = self.hub.seal(job.id)
        await self.store.events.append(pending)
        moved = await self.store.jobs.transition(
            job.id,
            JobStatus.QUEUED,
            attempts=max(0, job.attempts - 1),
            started_at=None,
            lease_owner=None,
            lease_expires_at=None,
            retry_at=until,
            window_retries=job.window_retries + 1,
        )
        self.hub.end(job.id, None)
        log.info("job_held_for_plan_window", job_id=job.id, moved=moved, retry_at=until.isoformat())

    async def _answer_to_schema(
        self, job: JobRecord, result: RunResult, started: float
    ) -> tuple[RunResult, dict[str, Any]]:
        """Validate a schema job's answer; one repair run (announced by a ``repairing`` status
        event, given what is left of the run's timeout) when it does not match."""

        async def rerun(repair: RunRequest, error: str) -> RunResult:
            left = max(1.0, repair.timeout_secs - (time.monotonic() - started))
            self.hub.publish(job.id, "status", {"status": "repairing", "reason": error})
            repaired = await self._stream(job, dataclasses.replace(repair, timeout_secs=left))
            await self._observe(job, repaired.plan_windows)
            return dataclasses.replace(repaired, text=_storable(repaired.text))

        request = dataclasses.replace(request_from_json(job.request), owner=job.key_id)
        clean = dataclasses.replace(result, text=_storable(result.text))
        return await answer_to_schema(job.request, request, clean, rerun)

    async def _stream(self, job: JobRecord, request: RunRequest | None = None) -> RunResult:
        if request is None:
            request = dataclasses.replace(request_from_json(job.request), owner=job.key_id)
        started_ns, waiting = time.time_ns(), True
        with tracing.span("ccgate.run", job_id=job.id, model=request.model, attempt=job.attempts):
            async with contextlib.aclosing(self.runner.run(request)) as events:
                async for event in events:
                    if waiting and isinstance(event, TextDelta | RunResult):
                        tracing.span_since("ccgate.first_token", started_ns)
                        waiting = False
                    if isinstance(event, TextDelta):
                        self.hub.publish(job.id, "chunk", {"text": event.text})
                    elif isinstance(event, RunResult):
                        return event
        raise RunError("cli_error", "the run ended without a result")

    async def _after_cancel(self, job: JobRecord) -> None:
        pending, next_seq = self.hub.seal(job.id)
        await asyncio.shield(self.store.events.append(pending))
        closing = None
        ended_here = job.id in self._cancelled_here or job.id in self._requeue_requested
        self._cancelled_here.discard(job.id)
        if not ended_here and next_seq is not None:
            # Ended elsewhere (another node, a revocation written to the store): hand the
            # stored closing event to this node's live subscribers, who would otherwise wait.
            closing = await asyncio.shield(self._stored_closing(job.id))
        self.hub.end(job.id, closing)
        if job.id in self._requeue_requested:
            self._requeue_requested.discard(job.id)
            # A shutdown is not the job's fault: do not count it as an attempt.
            await asyncio.shield(
                self.store.jobs.transition(
                    job.id,
                    JobStatus.QUEUED,
                    attempts=max(0, job.attempts - 1),
                    started_at=None,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            log.info("job_requeued_on_shutdown", job_id=job.id)

    async def _stored_closing(self, job_id: str) -> JobEvent | None:
        """The job's stored ``result`` event, if it has one (a rare path: read page by page)."""
        seq = 0
        while events := await self.store.events.after(job_id, seq):
            closing = next((e for e in events if e.type == "result"), None)
            if closing is not None:
                return closing
            seq = events[-1].seq
        return None

    # -- leases, recovery, cleanup -----------------------------------------------------

    async def _keep_leases(self) -> None:
        interval = self.limits.lease_secs / 3
        while True:
            await asyncio.sleep(interval)
            try:
                until = self.clock() + timedelta(seconds=self.limits.lease_secs)
                running = list(self._running)
                held = await self.store.jobs.renew_leases(self.node_id, running, until)
                for job_id in set(running) - held:
                    # Ended elsewhere (a cancel on another node): stop our copy of the run.
                    task = self._running.get(job_id)
                    if task is not None:
                        log.info("job_ended_elsewhere", job_id=job_id)
                        task.cancel()
                await self.recover()
                await self.end_unusable_work()
                await self.plan.refresh()
            except Exception:
                log.exception("lease_upkeep_failed")

    async def recover(self, *, orphans_of_any_node: bool = False) -> int:
        """Requeue (or fail, once attempts are used up) jobs whose node stopped renewing.

        With ``orphans_of_any_node`` (start-up on SQLite, where one node owns the file) every
        processing job not run here is treated as orphaned at once, without waiting for its
        lease to run out.
        """
        now = self.clock()
        cutoff = now + timedelta(days=3650) if orphans_of_any_node else now
        recovered = 0
        for job in await self.store.jobs.expired_leases(cutoff):
            if job.id in self._running:
                continue
            if job.attempts < self.limits.max_attempts:
                moved = await self.store.jobs.transition(
                    job.id,
                    JobStatus.QUEUED,
                    lease_expired_before=cutoff,
                    started_at=None,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            else:
                moved = (
                    await self._end(
                        job.id,
                        JobStatus.FAILED,
                        lease_expired_before=cutoff,
                        error_type="interrupted",
                        error_message=f"the job was interrupted {job.attempts} time(s) by a node "
                        "that stopped; no attempts left",
                    )
                    is not None
                )
            if moved:
                recovered += 1
                log.warning("job_recovered", job_id=job.id, attempts=job.attempts)
        if recovered:
            self._queue_seen_empty = False
            self._wake.set()
        return recovered

    async def _delete_expired_jobs(self, now: datetime) -> int:
        return await self.store.jobs.delete_finished_before(
            now - timedelta(hours=self.limits.job_ttl_hours)
        )

    async def _clean_up(self) -> None:
        """Delete finished jobs older than the TTL (with their events and deliveries), then
        run the other expiry sweeps (sessions, files) registered in ``cleanups``."""
        while True:
            now = self.clock()
            sweeps = list(self.cleanups)
            if self.limits.job_ttl_hours > 0:
                sweeps.insert(0, ("jobs", self._delete_expired_jobs))
            for name, sweep in sweeps:
                try:
                    deleted = await sweep(now)
                    if deleted:
                        log.info("expired_deleted", kind=name, count=deleted)
                except Exception:
                    log.exception("cleanup_failed", kind=name)
            await asyncio.sleep(self.limits.cleanup_interval_secs)


def _fresh(job: JobRecord) -> bool:
    """True for a job claimed straight from its submit: it cannot have events yet."""
    return job.attempts == 1 and job.started_at == job.created_at


def job_started(job: JobRecord | None) -> bool:
    """True for a job the store handed back already claimed (it runs at once)."""
    return job is not None and job.status is JobStatus.PROCESSING


def _storable(text: str) -> str:
    """``text`` with NUL characters as U+FFFD: PostgreSQL text cannot hold NUL, and a store
    that refuses the answer would leave its job running forever."""
    return text.replace("\x00", "\ufffd")


async def _read_answer(job: JobRecord, text: str) -> dict[str, Any]:
    """A JSON job's answer read once, as it ends, for the store: no reader parses it again."""
    if not answer_read_as_json(job.request):
        return {}
    answer = await read_json_answer_async(text)
    return {"result_json": answer.text, "result_parse_error": answer.error}


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
