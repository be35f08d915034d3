"""The job queue: submit, run under a concurrency cap, wait, cancel, recover, shut down."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from ccgate.clock import utcnow
from ccgate.jobs.requests import request_from_json
from ccgate.runners.base import RunError, Runner, collect
from ccgate.security.keys import new_id
from ccgate.store import JobRecord, JobStatus, Store

log = structlog.get_logger("ccgate.jobs")

_POLL_SECS = 1.0


class QueueFull(Exception):
    """The queue holds as many jobs as it may; try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("the job queue is full")
        self.retry_after = retry_after


class NotAccepting(Exception):
    """The node is shutting down and takes no new jobs."""


@dataclass(frozen=True)
class QueueLimits:
    """The knobs of one queue."""

    concurrency: int = 2
    queue_size: int = 100
    max_attempts: int = 2
    lease_secs: float = 30.0
    shutdown_grace_secs: float = 30.0
    recover_on_start: bool = True


class JobService:
    """Owns the life of every job this node runs; any door submits through it."""

    def __init__(self, store: Store, runner: Runner, limits: QueueLimits,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self.runner = runner
        self.limits = limits
        self.clock = clock
        self.node_id = f"{socket.gethostname()}-{os.getpid()}-{new_id('n')[2:10]}"
        self.accepting = False
        self._wake = asyncio.Event()
        self._slots_taken = 0
        self._done: dict[str, asyncio.Future[JobRecord | None]] = {}
        self._running: dict[str, asyncio.Task[JobRecord | None]] = {}
        self._requeue_requested: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Recover interrupted jobs, then start the dispatcher and the lease keeper."""
        if self.limits.recover_on_start:
            await self.recover(orphans_of_any_node=self.store.db.dialect == "sqlite")
        self.accepting = True
        self._tasks = [asyncio.create_task(self._dispatch(), name="ccgate-dispatch"),
                       asyncio.create_task(self._keep_leases(), name="ccgate-leases")]

    async def stop(self) -> None:
        """Stop taking jobs, let running ones finish within the grace, requeue the rest."""
        self.accepting = False
        self._wake.set()
        running = list(self._running.values())
        if running:
            await asyncio.wait(running, timeout=self.limits.shutdown_grace_secs)
        for job_id, task in list(self._running.items()):
            self._requeue_requested.add(job_id)
            task.cancel()
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=10)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.runner.aclose()

    # -- the API doors use -------------------------------------------------------------

    async def submit(self, *, key_id: str | None, door: str, request: dict[str, Any],
                     metadata: dict[str, Any] | None = None) -> JobRecord:
        """Queue a job; raise QueueFull or NotAccepting when it cannot be taken now.

        When this node has a free slot and nothing is waiting, the job is stored already
        claimed and starts at once: the same record and lease, one round trip fewer.
        """
        if not self.accepting:
            raise NotAccepting
        queued = await self.store.jobs.count(JobStatus.QUEUED)
        if queued >= self.limits.queue_size:
            raise QueueFull(retry_after=self._retry_after_hint())
        start_now = queued == 0 and self._slots_taken < self.limits.concurrency
        if start_now:
            self._slots_taken += 1
        now = self.clock()
        try:
            job = await self.store.jobs.insert(
                job_id=new_id("job"), key_id=key_id, door=door, model=str(request["model"]),
                request=request, metadata=metadata, now=now,
                claim_for=self.node_id if start_now else None,
                lease_until=now + timedelta(seconds=self.limits.lease_secs))
        except BaseException:
            if start_now:
                self._slots_taken -= 1
            raise
        if start_now:
            self._launch(job)
        else:
            self._wake.set()
        return job

    async def wait(self, job_id: str) -> JobRecord:
        """Return the job once it is terminal, whichever node ran it."""
        while True:
            done = self._done_future(job_id)
            if job_id not in self._running:
                job = await self.store.jobs.get(job_id)
                if job is None or job.status.terminal:
                    assert job is not None, f"job {job_id} vanished while waited on"
                    return job
            with contextlib.suppress(asyncio.TimeoutError):
                final = await asyncio.wait_for(asyncio.shield(done), _POLL_SECS)
                if final is not None:
                    return final

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or processing job; False if it had already ended."""
        changed = await self.store.jobs.transition(
            job_id, JobStatus.CANCELLED, finished_at=self.clock(),
            error_type="cancelled", error_message="the job was cancelled")
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()
        elif changed:
            self._finish(job_id, None)
        return changed

    def _retry_after_hint(self) -> int:
        return max(1, min(60, self.limits.queue_size // max(1, self.limits.concurrency)))

    def _done_future(self, job_id: str) -> asyncio.Future[JobRecord | None]:
        future = self._done.get(job_id)
        if future is None:
            future = self._done[job_id] = asyncio.get_running_loop().create_future()
        return future

    def _finish(self, job_id: str, record: JobRecord | None) -> None:
        """Hand the final record (None: look it up) to whoever waits on the job."""
        future = self._done.pop(job_id, None)
        if future is not None and not future.done():
            future.set_result(record)

    # -- running -----------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Claim queued jobs while slots are free; sleep until woken or the poll interval."""
        while self.accepting:
            self._wake.clear()
            while self.accepting and self._slots_taken < self.limits.concurrency:
                self._slots_taken += 1
                job = await self._claim()
                if job is None:
                    self._slots_taken -= 1
                    break
                self._launch(job)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _POLL_SECS)

    def _launch(self, job: JobRecord) -> None:
        """Run a claimed job in its own task; its slot is already taken."""
        task = asyncio.create_task(self._run(job), name=f"ccgate-run-{job.id}")
        self._running[job.id] = task

        def finished(done: asyncio.Task[JobRecord | None]) -> None:
            self._running.pop(job.id, None)
            self._slots_taken -= 1
            self._wake.set()
            record = None if done.cancelled() or done.exception() else done.result()
            self._finish(job.id, record)

        task.add_done_callback(finished)

    async def _claim(self) -> JobRecord | None:
        now = self.clock()
        try:
            return await self.store.jobs.claim_next(
                owner=self.node_id, now=now,
                lease_until=now + timedelta(seconds=self.limits.lease_secs))
        except Exception:
            log.exception("claim_failed")
            await asyncio.sleep(_POLL_SECS)
            return None

    async def _run(self, job: JobRecord) -> JobRecord | None:
        """Run the job and store its outcome; return the final record when this run set it."""
        started = time.monotonic()
        try:
            request = request_from_json(job.request)
            result = await collect(self.runner, request)
        except asyncio.CancelledError:
            await self._after_cancel(job)
            return None
        except RunError as exc:
            return await self._finish_failed(job, exc, started)
        except Exception as exc:
            log.exception("run_crashed", job_id=job.id)
            return await self._finish_failed(job, RunError(
                "internal_error", f"ccgate failed to run the job: {type(exc).__name__}"), started)
        return await self.store.jobs.finish(
            job.id, JobStatus.COMPLETED, finished_at=self.clock(), result=result.text,
            usage=result.usage, cost_usd=result.cost_usd, session_id=result.session_id,
            duration_ms=_elapsed_ms(started), model=result.model or job.model,
            lease_owner=None, lease_expires_at=None)

    async def _finish_failed(self, job: JobRecord, exc: RunError,
                             started: float) -> JobRecord | None:
        log.info("job_failed", job_id=job.id, error_type=exc.error_type)
        return await self.store.jobs.finish(
            job.id, JobStatus.FAILED, finished_at=self.clock(), error_type=exc.error_type,
            error_message=exc.message, duration_ms=_elapsed_ms(started),
            lease_owner=None, lease_expires_at=None)

    async def _after_cancel(self, job: JobRecord) -> None:
        if job.id in self._requeue_requested:
            self._requeue_requested.discard(job.id)
            # A shutdown is not the job's fault: do not count it as an attempt.
            await asyncio.shield(self.store.jobs.transition(
                job.id, JobStatus.QUEUED, attempts=max(0, job.attempts - 1), started_at=None,
                lease_owner=None, lease_expires_at=None))
            log.info("job_requeued_on_shutdown", job_id=job.id)

    # -- leases and recovery -----------------------------------------------------------

    async def _keep_leases(self) -> None:
        interval = self.limits.lease_secs / 3
        while True:
            await asyncio.sleep(interval)
            try:
                until = self.clock() + timedelta(seconds=self.limits.lease_secs)
                await self.store.jobs.renew_leases(self.node_id, self._running, until)
                await self.recover()
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
                    job.id, JobStatus.QUEUED, lease_expired_before=cutoff, started_at=None,
                    lease_owner=None, lease_expires_at=None)
            else:
                moved = await self.store.jobs.transition(
                    job.id, JobStatus.FAILED, lease_expired_before=cutoff, finished_at=now,
                    error_type="interrupted",
                    error_message=f"the job was interrupted {job.attempts} time(s) by a node "
                    "that stopped; no attempts left", lease_owner=None, lease_expires_at=None)
            if moved:
                recovered += 1
                log.warning("job_recovered", job_id=job.id, attempts=job.attempts)
                self._finish(job.id, None)
        if recovered:
            self._wake.set()
        return recovered


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
