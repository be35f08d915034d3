"""The Message Batches engine on the job queue: create, feed, results, cancel, expiry, restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from ccgate.clock import utcnow
from ccgate.jobs import JobService, QueueLimits, Submission, request_to_json
from ccgate.jobs.batches import (
    Admitted,
    BatchInvalid,
    BatchNotEnded,
    BatchNotFound,
    BatchService,
    BatchSettings,
    Refused,
)
from ccgate.runners.base import RunError, RunRequest
from ccgate.store import JobStatus, Store
from ccgate.store.batches import BatchRecord, BatchStatus, RequestState
from ccgate.store.schema import batch_requests, jobs
from tests.support.fake_runner import FakeRunner

Engine = tuple[JobService, BatchService]


def _requests(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}{i}",
            "params": {
                "model": "sonnet",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"q{i}"}],
            },
        }
        for i in range(n)
    ]


def _prompts(runner: FakeRunner) -> list[str]:
    return [r.prompt_text for r in runner.started]


async def _key(store: Store, name: str = "app") -> str:
    key_id = f"key_{name}"
    await store.keys.insert(
        key_id=key_id, name=name, prefix="ccg_x", secret_hash=name.ljust(64, "h"), now=utcnow()
    )
    return key_id


async def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def _ended(batches: BatchService, batch_id: str, key_id: str) -> BatchRecord:
    async with asyncio.timeout(10):
        while (batch := await batches.get(batch_id, key_id)).status is not BatchStatus.ENDED:
            await asyncio.sleep(0.02)
    return batch


async def _results(batches: BatchService, batch_id: str, key_id: str) -> dict[str, Any]:
    return {r["custom_id"]: r["result"] async for r in await batches.results(batch_id, key_id)}


@pytest.fixture
async def engine(store: Store) -> AsyncIterator[Callable[..., Any]]:
    """Start a JobService and a BatchService on the contract store; all stop at the end."""
    started: list[Engine] = []

    async def start(
        runner: FakeRunner | None = None, *, concurrency: int = 2, **options: Any
    ) -> Engine:
        callbacks = {k: options.pop(k) for k in ("admit", "validate") if k in options}
        options.setdefault("poll_secs", 0.05)
        options.setdefault("sweep_secs", 0.1)
        jobs_service = JobService(
            store,
            runner or FakeRunner(),
            QueueLimits(concurrency=concurrency, shutdown_grace_secs=0.1),
        )
        await jobs_service.start()
        batches = BatchService(store, jobs_service, BatchSettings(**options), **callbacks)
        await batches.start()
        started.append((jobs_service, batches))
        return jobs_service, batches

    yield start
    for jobs_service, batches in reversed(started):
        await batches.stop()
        await jobs_service.stop()


async def test_batches_create_stores_every_request_as_processing(store: Store, engine: Any) -> None:
    """A created batch is stored in progress, with all its requests counted as processing."""
    key = await _key(store)
    _, batches = await engine(FakeRunner(block=True))
    batch = await batches.create(key, _requests(3))
    assert batch.id.startswith("msgbatch_") and batch.status is BatchStatus.IN_PROGRESS
    stored = await batches.get(batch.id, key)
    assert stored.counts.processing == 3 and stored.counts.succeeded == 0
    assert stored.expires_at - stored.created_at == timedelta(hours=24)
    with pytest.raises(BatchNotFound):
        await batches.get(batch.id, await _key(store, "other"))


@pytest.mark.parametrize(
    ("requests", "fragment"),
    [
        ([], "1 to 3 requests"),
        (_requests(4), "1 to 3 requests"),
        ([*_requests(1), *_requests(1)], "'r0' is used more than once"),
        ([{"custom_id": "a b", "params": {}}], "'a b' must be 1 to 64"),
        ([{"custom_id": "x" * 65, "params": {}}], "must be 1 to 64"),
        ([{"custom_id": "ok"}], "requests[0].params (custom_id 'ok') must be an object"),
    ],
    ids=["empty", "too-many", "duplicate", "bad-format", "too-long", "no-params"],
)
async def test_batches_create_refuses_invalid_requests_clearly(
    store: Store, requests: list[Any], fragment: str
) -> None:
    """Bad sizes, custom_ids (format, duplicates) and params raise BatchInvalid naming them."""
    batches = BatchService(store, JobService(store, FakeRunner(), QueueLimits()))
    batches.settings = BatchSettings(max_requests=3)
    with pytest.raises(BatchInvalid) as info:
        await batches.create(await _key(store), requests)
    assert fragment in str(info.value)


async def test_batches_create_names_custom_id_the_validator_refused(store: Store) -> None:
    """A ValueError of the door's validate callback becomes BatchInvalid naming the custom_id."""

    def validate(params: dict[str, Any]) -> dict[str, Any]:
        if "max_tokens" not in params:
            raise ValueError("max_tokens is required")
        return params

    batches = BatchService(store, JobService(store, FakeRunner(), QueueLimits()), validate=validate)
    bad = [*_requests(1), {"custom_id": "bad", "params": {"model": "sonnet"}}]
    with pytest.raises(BatchInvalid, match=r"custom_id 'bad'\): max_tokens is required"):
        await batches.create(await _key(store), bad)


async def test_batches_feeding_never_exceeds_the_in_flight_bound(store: Store, engine: Any) -> None:
    """With in_flight 2 and four free slots, a batch never has more than two jobs at once."""
    key = await _key(store)
    runner = FakeRunner(block=True)
    _, batches = await engine(runner, concurrency=4, in_flight=2)
    batch = await batches.create(key, _requests(6))
    await _wait_for(lambda: runner.running == 2)
    await asyncio.sleep(0.3)
    count = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.door == "batch")
    assert await store.db.read(lambda c: c.execute(count).scalar()) == 2
    runner.released.set()
    done = await _ended(batches, batch.id, key)
    assert done.counts.succeeded == 6 and runner.peak_running == 2
    assert sorted(_prompts(runner)) == [f"q{i}" for i in range(6)]


async def test_batches_results_of_succeeded_requests_in_sdk_shape(
    store: Store, engine: Any
) -> None:
    """Each succeeded request yields its custom_id and a Messages-shaped message."""
    key = await _key(store)
    _, batches = await engine()
    batch = await batches.create(key, _requests(2))
    await _ended(batches, batch.id, key)
    results = await _results(batches, batch.id, key)
    assert set(results) == {"r0", "r1"}
    assert results["r1"]["type"] == "succeeded"
    message = results["r1"]["message"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"] == [{"type": "text", "text": "reply: q1"}]
    assert message["usage"] == {"input_tokens": 5, "output_tokens": 7}


async def test_batches_failed_job_is_errored_with_its_error(store: Store, engine: Any) -> None:
    """A failed run's request ends errored with its error type and message, SDK-nested."""
    key = await _key(store)
    _, batches = await engine(FakeRunner(error=RunError("timeout", "the run took too long")))
    batch = await batches.create(key, _requests(1))
    assert (await _ended(batches, batch.id, key)).counts.errored == 1
    assert (await _results(batches, batch.id, key))["r0"] == {
        "type": "errored",
        "error": {
            "type": "error",
            "error": {"type": "timeout", "message": "the run took too long"},
        },
    }


async def test_batches_admission_budget_errors_and_rate_limit_retries(
    store: Store, engine: Any
) -> None:
    """A spent budget ends a request errored unrun; a rate limit makes it wait and retry."""
    key = await _key(store)
    refusals: list[str] = []

    async def admit(_key_id: str, params: dict[str, Any]) -> Admitted | Refused:
        prompt = params["messages"][0]["content"]
        if prompt == "q0":
            return Refused("budget_exceeded", "the key's monthly budget is spent")
        if prompt == "q1" and not refusals:
            refusals.append(prompt)
            return Refused("rate_limited", "slow down", retry_after=0.2)
        return Admitted()

    runner = FakeRunner()
    _, batches = await engine(runner, admit=admit)
    batch = await batches.create(key, _requests(2))
    await _ended(batches, batch.id, key)
    results = await _results(batches, batch.id, key)
    assert results["r0"]["error"]["error"] == {
        "type": "budget_exceeded",
        "message": "the key's monthly budget is spent",
    }
    assert results["r1"]["type"] == "succeeded" and refusals == ["q1"]
    assert _prompts(runner) == ["q1"]


async def test_batches_full_queue_puts_requests_back_and_releases_admission(
    store: Store, engine: Any
) -> None:
    """While the queue is full a batch request gets no job, its admission is released
    (attach None) and it waits; once there is room the batch finishes, each attached once."""
    key = await _key(store)
    attached: list[str | None] = []

    async def attach(job_id: str | None) -> None:
        attached.append(job_id)

    async def admit(_key_id: str, _params: dict[str, Any]) -> Admitted | Refused:
        return Admitted(attach=attach)

    runner = FakeRunner(block=True)
    jobs_service, batches = await engine(runner, concurrency=1, admit=admit)
    jobs_service.limits = QueueLimits(concurrency=1, queue_size=1, shutdown_grace_secs=0.1)
    request = request_to_json(RunRequest.from_text("other", "sonnet"))
    await jobs_service.submit(Submission(key, "native", request))
    await _wait_for(lambda: runner.running == 1)
    await jobs_service.submit(Submission(key, "native", request))  # the queue is full now
    batch = await batches.create(key, _requests(2))
    await _wait_for(lambda: None in attached)
    count = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.door == "batch")
    assert await store.db.read(lambda c: c.execute(count).scalar()) == 0
    runner.released.set()
    assert (await _ended(batches, batch.id, key)).counts.succeeded == 2
    assert sorted(j for j in attached if j is not None) == sorted(
        r.id
        for r in (await store.jobs.page(key, status=None, limit=10, offset=0))[0]
        if r.door == "batch"
    )


async def test_batches_cancel_ends_pending_and_running_requests(store: Store, engine: Any) -> None:
    """Cancel: pending requests end canceled at once, running ones are stopped; it ends."""
    key = await _key(store)
    runner = FakeRunner(block=True)
    _, batches = await engine(runner, in_flight=2)
    batch = await batches.create(key, _requests(5))
    await _wait_for(lambda: runner.running == 2)
    canceling = await batches.cancel(batch.id, key)
    assert canceling.cancel_initiated_at is not None
    done = await _ended(batches, batch.id, key)
    assert done.counts.canceled == 5 and done.ended_at is not None
    results = await _results(batches, batch.id, key)
    assert all(r == {"type": "canceled"} for r in results.values()) and len(results) == 5
    assert len(runner.started) == 2


async def test_batches_delete_refused_until_ended(store: Store, engine: Any) -> None:
    """Deleting a running batch raises BatchNotEnded; once ended it and its rows are gone."""
    key = await _key(store)
    runner = FakeRunner(block=True)
    _, batches = await engine(runner)
    batch = await batches.create(key, _requests(3))
    with pytest.raises(BatchNotEnded, match="still in_progress"):
        await batches.delete(batch.id, key)
    runner.released.set()
    await _ended(batches, batch.id, key)
    await batches.delete(batch.id, key)
    with pytest.raises(BatchNotFound):
        await batches.get(batch.id, key)
    rows = sa.select(sa.func.count()).select_from(batch_requests)
    await _wait_for_rows(store, rows, 0)


async def _wait_for_rows(store: Store, query: sa.Select[Any], expected: int) -> None:
    async with asyncio.timeout(5):
        while await store.db.read(lambda c: c.execute(query).scalar()) != expected:
            await asyncio.sleep(0.02)


async def test_batches_expiry_ends_unfinished_requests_expired(store: Store, engine: Any) -> None:
    """Past its expiry a batch ends: pending and running requests end expired, runs stop."""
    key = await _key(store)
    runner = FakeRunner(block=True)
    _, batches = await engine(runner, in_flight=1, expiry=timedelta(seconds=0.5))
    batch = await batches.create(key, _requests(3))
    await _wait_for(lambda: runner.running == 1)
    done = await _ended(batches, batch.id, key)
    assert done.counts.expired == 3 and done.counts.processing == 0
    await _wait_for(lambda: runner.cancelled == 1)
    results = await _results(batches, batch.id, key)
    assert results == {f"r{i}": {"type": "expired"} for i in range(3)}


async def test_batches_ttl_cleanup_deletes_old_ended_batches(store: Store, engine: Any) -> None:
    """The cleanup sweep removes ended batches older than the TTL, keeping younger ones."""
    key = await _key(store)
    _, batches = await engine(ttl=timedelta(days=29))
    batch = await batches.create(key, _requests(2))
    await _ended(batches, batch.id, key)
    assert await batches.clean_up(utcnow() + timedelta(days=28)) == 0
    assert await batches.clean_up(utcnow() + timedelta(days=30)) == 1
    with pytest.raises(BatchNotFound):
        await batches.get(batch.id, key)
    await _wait_for_rows(store, sa.select(sa.func.count()).select_from(batch_requests), 0)


async def test_batches_restart_finishes_batch_without_rerunning_to_success(
    store: Store, engine: Any
) -> None:
    """Stopped mid-batch and started again on the same database, the batch finishes with
    every request succeeded once and one job per request."""
    key = await _key(store)
    first = FakeRunner(block=True)
    jobs_service, batches = await engine(first, in_flight=2)
    batch = await batches.create(key, _requests(4))
    await _wait_for(lambda: first.running == 2)
    await batches.stop()
    await jobs_service.stop()
    second = FakeRunner()
    _, batches = await engine(second, in_flight=2)
    done = await _ended(batches, batch.id, key)
    assert done.counts.succeeded == 4
    assert sorted(_prompts(second)) == ["q0", "q1", "q2", "q3"]
    count = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.door == "batch")
    assert await store.db.read(lambda c: c.execute(count).scalar()) == 4


async def _ended_job(store: Store, job_id: str, key: str, batch_id: str, seq: int) -> None:
    """Store a batch request's job as it would be left ended (cancelled) by a dead node."""
    now = utcnow()
    await store.jobs.insert(
        job_id=job_id,
        key_id=key,
        door="batch",
        model="sonnet",
        request=request_to_json(RunRequest.from_text(f"q{seq}", "sonnet")),
        metadata={"batch_id": batch_id, "batch_seq": seq},
        now=now,
        idempotency_key=f"batch:{batch_id}:{seq}",
    )
    await store.jobs.finish(job_id, JobStatus.CANCELLED, now=now)


async def test_batches_recover_after_kill_records_and_refeeds(store: Store, engine: Any) -> None:
    """After a kill, a request taken long ago without a job is fed; one whose job ended is
    recorded without running again, also when its job was never noted on it; one whose job
    row is gone is fed anew."""
    key = await _key(store)
    idle = BatchService(store, JobService(store, FakeRunner(), QueueLimits()))
    batch = await idle.create(key, _requests(4))
    now = utcnow()
    await store.batches.take_pending(batch.id, in_flight=3, now=now - timedelta(minutes=5))
    await store.batches.take_pending(batch.id, in_flight=4, now=now)
    await _ended_job(store, "job_done", key, batch.id, 1)
    await store.batches.attach_job(batch.id, 1, "job_done", now)
    await store.batches.attach_job(batch.id, 2, "job_gone", now)
    await _ended_job(store, "job_unnoted", key, batch.id, 3)
    runner = FakeRunner()
    _, batches = await engine(runner, stale_secs=60)
    done = await _ended(batches, batch.id, key)
    assert (done.counts.succeeded, done.counts.canceled) == (2, 2)
    assert sorted(_prompts(runner)) == ["q0", "q2"]


async def test_batches_other_keys_job_is_not_starved(store: Store, engine: Any) -> None:
    """Behind a big batch on one slot, another key's single job runs next, not last."""
    big, small = await _key(store, "big"), await _key(store, "small")
    runner = FakeRunner(block=True)
    jobs_service, batches = await engine(runner, concurrency=1, in_flight=2)
    batch = await batches.create(big, _requests(20))
    await _wait_for(lambda: runner.running == 1)
    await asyncio.sleep(0.2)
    request = request_to_json(RunRequest.from_text("other key", "sonnet"))
    job, _ = await jobs_service.submit(Submission(small, "native", request))
    runner.released.set()
    assert (await jobs_service.wait(job.id)).status is JobStatus.COMPLETED
    assert _prompts(runner).index("other key") == 1
    await _ended(batches, batch.id, big)


async def test_batches_jobs_wait_behind_their_keys_other_jobs(store: Store, engine: Any) -> None:
    """Within one key, a queued batch request waits behind the key's later non-batch job."""
    key = await _key(store)
    runner = FakeRunner(block=True)
    jobs_service, batches = await engine(runner, concurrency=1, in_flight=2)
    batch = await batches.create(key, _requests(3))
    await _wait_for(lambda: runner.running == 1)
    await asyncio.sleep(0.2)
    request = request_to_json(RunRequest.from_text("sync call", "sonnet"))
    await jobs_service.submit(Submission(key, "anthropic", request))
    runner.released.set()
    await _ended(batches, batch.id, key)
    assert _prompts(runner)[:2] == ["q0", "sync call"]


async def test_batches_list_pages_newest_first(store: Store) -> None:
    """Listing pages a key's batches newest first; after_id goes older, before_id newer."""
    key = await _key(store)
    batches = BatchService(store, JobService(store, FakeRunner(), QueueLimits()))
    ids = [(await batches.create(key, _requests(1))).id for _ in range(5)]
    first = await batches.page(key, limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    second = await batches.page(key, after_id=first.last_id, limit=2)
    assert [b.id for b in second.data] == ids[::-1][2:4] and second.has_more
    last = await batches.page(key, after_id=second.last_id, limit=2)
    assert [b.id for b in last.data] == ids[:1] and not last.has_more
    back = await batches.page(key, before_id=second.first_id, limit=2)
    assert [b.id for b in back.data] == ids[::-1][:2] and not back.has_more


async def test_batches_create_of_100000_requests_completes(store: Store) -> None:
    """The largest batch (100,000 requests) is stored in one go with the right counts."""
    key = await _key(store)
    batches = BatchService(store, JobService(store, FakeRunner(), QueueLimits()))
    batch = await batches.create(key, _requests(100_000))
    stored = await batches.get(batch.id, key)
    assert stored.counts.processing == 100_000
    states = sa.select(sa.func.count()).where(
        batch_requests.c.batch_id == batch.id,
        batch_requests.c.state == RequestState.PENDING.value,
    )
    assert await store.db.read(lambda c: c.execute(states).scalar()) == 100_000
