"""The job queue: concurrency cap, capacity, cancel, failure, recovery and shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest

from ccgate.clock import utcnow
from ccgate.jobs import JobService, QueueFull, QueueLimits, Submission, request_to_json
from ccgate.runners.base import RunError, RunRequest
from ccgate.store import JobStatus, Store
from tests.support.fake_runner import FakeRunner

ServiceFactory = Callable[..., "asyncio.Future[JobService]"]


def _request(prompt: str = "hi") -> dict[str, Any]:
    return request_to_json(RunRequest.from_text(prompt, "sonnet"))


@pytest.fixture
async def services(store: Store) -> AsyncIterator[Callable[..., Any]]:
    """Start JobServices on the contract store; all are stopped at the end."""
    started: list[JobService] = []

    async def start(runner: FakeRunner, **limits: Any) -> JobService:
        limits.setdefault("shutdown_grace_secs", 0.2)
        service = JobService(store, runner, QueueLimits(**limits))
        await service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stop()


async def _submit(service: JobService, prompt: str = "hi") -> Any:
    job, _ = await service.submit(Submission(None, "native", _request(prompt)))
    return job


async def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_jobs_submitted_job_completes_with_result(services: Any) -> None:
    """A queued job runs and lands completed with its text, usage, cost and session."""
    service = await services(FakeRunner())
    job, _ = await service.submit(
        Submission(None, "native", _request("hello"), session_id="ses_given")
    )
    done = await asyncio.wait_for(service.wait(job.id), 5)
    assert done.status is JobStatus.COMPLETED
    assert done.result == "reply: hello"
    assert done.usage == {"input_tokens": 5, "output_tokens": 7}
    assert done.cost_usd == 0.001 and done.session_id == "ses_given"


async def test_jobs_concurrency_cap_holds(services: Any) -> None:
    """With concurrency 2, five jobs never run more than two at once, and all finish."""
    runner = FakeRunner(block=True)
    service = await services(runner, concurrency=2)
    jobs = [await _submit(service, str(n)) for n in range(5)]
    await _wait_for(lambda: runner.running == 2)
    await asyncio.sleep(0.1)
    assert runner.peak_running == 2
    runner.released.set()
    finished = [await asyncio.wait_for(service.wait(j.id), 5) for j in jobs]
    assert all(j.status is JobStatus.COMPLETED for j in finished)


async def test_jobs_full_queue_refuses_with_retry_after(services: Any) -> None:
    """Once queue_size jobs wait, the next submit raises QueueFull with a retry hint."""
    runner = FakeRunner(block=True)
    service = await services(runner, concurrency=1, queue_size=2)
    await _submit(service)
    await _wait_for(lambda: runner.running == 1)
    for _ in range(2):
        await _submit(service)
    with pytest.raises(QueueFull) as info:
        await _submit(service)
    assert info.value.retry_after >= 1
    runner.released.set()


async def test_jobs_cancel_queued_job_never_starts(services: Any) -> None:
    """A job cancelled while queued ends cancelled and the runner never sees it."""
    runner = FakeRunner(block=True)
    service = await services(runner, concurrency=1)
    await _submit(service, "first")
    await _wait_for(lambda: runner.running == 1)
    second = await _submit(service, "second")
    assert await service.cancel(second.id) is not None
    runner.released.set()
    assert (await service.wait(second.id)).status is JobStatus.CANCELLED
    await asyncio.sleep(0.1)
    assert [r.prompt_text for r in runner.started] == ["first"]


async def test_jobs_cancel_running_job_stops_the_run(services: Any) -> None:
    """Cancelling a processing job cancels its run; a second cancel reports it already ended."""
    runner = FakeRunner(block=True)
    service = await services(runner)
    job = await _submit(service)
    await _wait_for(lambda: runner.running == 1)
    assert await service.cancel(job.id) is not None
    await _wait_for(lambda: runner.cancelled == 1)
    done = await service.wait(job.id)
    assert done.status is JobStatus.CANCELLED and done.error_type == "cancelled"
    assert await service.cancel(job.id) is None


async def test_jobs_run_error_fails_job_with_its_type(services: Any) -> None:
    """A RunError lands as a failed job carrying the error type and message."""
    error = RunError("upstream_rate_limited", "slow down")
    service = await services(FakeRunner(error=error))
    job = await _submit(service)
    done = await asyncio.wait_for(service.wait(job.id), 5)
    assert done.status is JobStatus.FAILED
    assert (done.error_type, done.error_message) == ("upstream_rate_limited", "slow down")
    assert done.finished_at is not None and done.duration_ms is not None


async def _orphan(store: Store, job_id: str, attempts: int) -> None:
    """Leave a job processing under a node that no longer exists, as kill -9 would."""
    await store.jobs.insert(
        job_id=job_id,
        key_id=None,
        door="native",
        model="sonnet",
        request=_request(),
        metadata=None,
        now=utcnow(),
    )
    past = utcnow() - timedelta(minutes=5)
    for _ in range(attempts):
        await store.jobs.transition(job_id, JobStatus.QUEUED, lease_owner=None)
        await store.jobs.claim_next(owner="dead-node", now=past, lease_until=past)


async def test_jobs_orphan_of_dead_node_is_rerun(store: Store, services: Any) -> None:
    """A job left processing by a dead node is found at start and run again."""
    await _orphan(store, "job_orphan", attempts=1)
    service = await services(FakeRunner(), max_attempts=2)
    done = await asyncio.wait_for(service.wait("job_orphan"), 5)
    assert done.status is JobStatus.COMPLETED and done.attempts == 2


async def test_jobs_orphan_out_of_attempts_fails_interrupted(store: Store, services: Any) -> None:
    """An orphan that used up its attempts ends failed with error type interrupted."""
    await _orphan(store, "job_orphan", attempts=2)
    service = await services(FakeRunner(), max_attempts=2)
    done = await asyncio.wait_for(service.wait("job_orphan"), 5)
    assert done.status is JobStatus.FAILED and done.error_type == "interrupted"


async def test_jobs_shutdown_requeues_running_job(store: Store, services: Any) -> None:
    """A job still running after the grace goes back to the queue, its attempt not counted."""
    runner = FakeRunner(block=True)
    service = await services(runner, shutdown_grace_secs=0.1)
    job = await _submit(service)
    await _wait_for(lambda: runner.running == 1)
    await service.stop()
    assert not service.accepting
    stored = await store.jobs.get(job.id)
    assert stored is not None
    assert stored.status is JobStatus.QUEUED and stored.attempts == 0
