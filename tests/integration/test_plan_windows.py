"""The queue against the subscription's plan windows: holding, retrying once, refusing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from ccgate.clock import utcnow
from ccgate.jobs import JobService, QueueLimits, Submission, request_to_json
from ccgate.jobs.windows import WindowsClosed
from ccgate.runners.base import RunRequest
from ccgate.runners.plan_windows import PlanWindow, WindowClosed
from ccgate.store import JobStatus, Store
from tests.support.fake_runner import FakeRunner


class Clock:
    """A wall clock the test moves forward by hand."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


def _closed(clock: Clock, secs: float = 3600) -> WindowClosed:
    resets = clock.now + timedelta(seconds=secs)
    window = PlanWindow("five_hour", "rejected", 1.0, resets, clock.now)
    return WindowClosed(
        "You've hit your limit", resets_at=resets, retry_after=secs, windows=(window,)
    )


@pytest.fixture
async def service_for(store: Store) -> AsyncIterator[Callable[..., Any]]:
    """Start a JobService on the contract store with a hand-moved clock."""
    started: list[JobService] = []

    async def start(runner: FakeRunner, clock: Clock) -> JobService:
        service = JobService(store, runner, QueueLimits(shutdown_grace_secs=0.2), clock=clock)
        await service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stop()


def _submission(*, waits: bool = True) -> Submission:
    return Submission(
        None,
        "native",
        request_to_json(RunRequest.from_text("hi", "sonnet")),
        waits_for_window=waits,
    )


async def _until(predicate: Callable[[], Any], timeout: float = 8.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_plan_window_running_job_is_held_then_runs_after_the_reset(
    service_for: Any, store: Store
) -> None:
    """A job whose window closes mid-run goes back to the queue with retry_at at the reset
    and completes on its own once the clock passes it."""
    clock = Clock()
    runner = FakeRunner(error=_closed(clock))
    service = await service_for(runner, clock)
    job, _ = await service.submit(_submission())

    async def held() -> bool:
        stored = await store.jobs.get(job.id)
        return (
            stored is not None and stored.status is JobStatus.QUEUED and stored.retry_at is not None
        )

    await _until(held)
    runner.error = None
    await asyncio.sleep(1.2)
    assert (await store.jobs.get(job.id)).status is JobStatus.QUEUED  # type: ignore[union-attr]
    clock.now += timedelta(seconds=3601)
    done = await asyncio.wait_for(service.wait(job.id), 8)
    assert done.status is JobStatus.COMPLETED and done.window_retries == 1


async def test_plan_window_job_is_retried_once_then_fails_clearly(
    service_for: Any, store: Store
) -> None:
    """A job whose window closes again on its one retry fails as upstream_rate_limited,
    saying it was retried."""
    clock = Clock()
    runner = FakeRunner(error=_closed(clock, 60))
    service = await service_for(runner, clock)
    job, _ = await service.submit(_submission())

    async def held() -> bool:
        stored = await store.jobs.get(job.id)
        return stored is not None and stored.window_retries == 1

    await _until(held)
    clock.now += timedelta(seconds=61)
    runner.error = _closed(clock, 60)
    done = await asyncio.wait_for(service.wait(job.id), 8)
    assert done.status is JobStatus.FAILED
    assert done.error_type == "upstream_rate_limited"
    assert "retried once" in (done.error_message or "")


async def test_plan_window_closed_holds_new_async_jobs_and_refuses_sync_ones(
    service_for: Any, store: Store
) -> None:
    """While a window is known closed, an async submission is queued with retry_at at the
    reset and a synchronous one is refused with the seconds until it."""
    clock = Clock()
    service = await service_for(FakeRunner(), clock)
    resets = clock.now + timedelta(seconds=600)
    await service.plan.observe([PlanWindow("seven_day", "rejected", 1.0, resets, clock.now)], None)
    job, _ = await service.submit(_submission())
    assert job.status is JobStatus.QUEUED and job.retry_at == resets
    with pytest.raises(WindowsClosed) as caught:
        await service.submit(_submission(waits=False))
    assert 599 <= caught.value.retry_after <= 600
    await asyncio.sleep(1.2)
    assert (await store.jobs.get(job.id)).status is JobStatus.QUEUED  # type: ignore[union-attr]


async def test_plan_window_sync_job_fails_at_once_with_retry_after(service_for: Any) -> None:
    """A synchronous caller's job is never held: it fails with Retry-After from the reset."""
    clock = Clock()
    service = await service_for(FakeRunner(error=_closed(clock, 120)), clock)
    job, _ = await service.submit(_submission(waits=False))
    done = await asyncio.wait_for(service.wait(job.id), 8)
    assert done.status is JobStatus.FAILED and done.retry_after == 120


async def test_plan_window_share_used_up_holds_the_keys_jobs(
    service_for: Any, store: Store
) -> None:
    """A key whose runs used its window_share of a window is held (async) or refused
    (sync, marked as a share) until that window resets."""
    from ccgate.policy import KeyPolicy
    from ccgate.security.keyring import Keyring

    clock = Clock()
    service = await service_for(FakeRunner(), clock)
    created = await Keyring(store).create("shared-app", KeyPolicy(window_share=0.25))
    key = await store.keys.by_name("shared-app")
    assert key is not None and created is not None
    resets = clock.now + timedelta(hours=5)
    await store.plan_windows.record([PlanWindow("five_hour", "allowed", 0.1, resets, clock.now)])
    await service.plan.observe(
        [PlanWindow("five_hour", "allowed", 0.4, resets, clock.now + timedelta(seconds=1))], key.id
    )
    with pytest.raises(WindowsClosed) as caught:
        await service.submit(
            Submission(key.id, "native", _submission().request, waits_for_window=False)
        )
    assert caught.value.share and caught.value.until == resets
