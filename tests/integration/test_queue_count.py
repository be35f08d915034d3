"""The queued count SQLite keeps in ``job_queue_depth`` (triggers on ``jobs``) always equals a
real count, whatever changed the jobs and from where; the capacity check reading it is exact
on both backends."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from ccgate.clock import utcnow
from ccgate.store import JobRecord, JobStatus, Store
from ccgate.store.engine import MIGRATIONS_DIR, Operation
from ccgate.store.jobs import QueueAtCapacity
from ccgate.store.schema import jobs
from tests.integration.conftest import Gateway
from tests.support.fake_runner import FakeRunner

_TRIGGERS = {"trg_jobs_queued_insert", "trg_jobs_queued_update", "trg_jobs_queued_delete"}


async def _insert(store: Store, job_id: str, **extra: Any) -> JobRecord | None:
    now = utcnow()
    extra.setdefault("key_id", None)
    return await store.jobs.insert(
        job_id=job_id,
        door="native",
        model="sonnet",
        request={"content": [{"type": "text", "text": "hi"}]},
        metadata=None,
        now=now,
        lease_until=now + timedelta(seconds=30),
        **extra,
    )


async def _counts(store: Store) -> tuple[int, int]:
    """The kept count and a real count of the queued jobs."""

    def op(conn: sa.Connection) -> tuple[int, int]:
        kept = conn.execute(sa.text("SELECT queued FROM job_queue_depth")).scalar_one()
        real = conn.execute(
            sa.text("SELECT count(*) FROM jobs WHERE status = 'queued'")
        ).scalar_one()
        return int(kept), int(real)

    return await store.db.read(op)


async def _assert_queued(store: Store, expected: int) -> None:
    assert await _counts(store) == (expected, expected)
    assert await store.jobs.count(JobStatus.QUEUED) == expected


def _migrate_to(target: str, *, down: bool = False) -> Operation[None]:
    def op(conn: sa.Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, target)

    return op


async def _sqlite_objects(store: Store) -> set[str]:
    def op(conn: sa.Connection) -> set[str]:
        rows = conn.execute(
            sa.text("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")
        )
        return {r[0] for r in rows}

    return await store.db.read(op)


async def test_queue_count_fresh_schema_has_the_table_and_triggers(
    sqlite_store: Store,
) -> None:
    """A freshly migrated SQLite store starts with the kept count at zero and its triggers."""
    assert {"job_queue_depth", *_TRIGGERS} <= await _sqlite_objects(sqlite_store)
    await _assert_queued(sqlite_store, 0)


async def test_queue_count_follows_every_job_change(sqlite_store: Store) -> None:
    """Inserts, direct starts, claims, cancels, requeues, holds and deletes keep it exact."""
    store = sqlite_store
    started = await _insert(store, "job_direct", claim_for="node-1", max_queued=10)
    assert started is not None and started.status is JobStatus.PROCESSING
    await _assert_queued(store, 0)
    for n in range(5):
        await _insert(store, f"job_{n}", max_queued=10)
    await _assert_queued(store, 5)

    now = utcnow()
    claimed = await store.jobs.claim_next(
        owner="node-1", now=now, lease_until=now + timedelta(seconds=30)
    )
    assert claimed is not None
    await _assert_queued(store, 4)
    # A cancel of a queued job, and of a running one (no change to the queue).
    assert await store.jobs.finish("job_1", JobStatus.CANCELLED, now=now) is not None
    await _assert_queued(store, 3)
    assert await store.jobs.finish(claimed.id, JobStatus.CANCELLED, now=now) is not None
    await _assert_queued(store, 3)
    # A guarded update that does not apply changes nothing.
    assert await store.jobs.finish("job_1", JobStatus.COMPLETED, now=now) is None
    await _assert_queued(store, 3)
    # Lease expiry recovery puts the running job back in the queue.
    later = now + timedelta(minutes=5)
    assert await store.jobs.transition(
        "job_direct", JobStatus.QUEUED, lease_expired_before=later, lease_owner=None
    )
    await _assert_queued(store, 4)
    # A plan window's hold writes retry_at, not the status.
    assert await store.jobs.hold_queued(later) == 4
    await _assert_queued(store, 4)
    # Deleting a queued job (DELETE /api/v1/jobs/{id} of one just cancelled elsewhere).
    assert await store.jobs.delete("job_2")
    await _assert_queued(store, 3)
    # The clean-up of finished jobs removes only ended ones.
    assert await store.jobs.delete_finished_before(later) == 2
    await _assert_queued(store, 3)
    assert await store.jobs.finish("job_3", JobStatus.FAILED, now=later) is not None
    await _assert_queued(store, 2)


async def test_queue_count_unchanged_by_an_idempotent_conflict(sqlite_store: Store) -> None:
    """A second submit under the same idempotency key stores nothing and counts nothing."""
    store = sqlite_store
    await store.keys.insert(
        key_id="key_1",
        name="app",
        prefix="ccg_x",
        secret_hash="h" * 64,
        now=utcnow(),
    )
    first = await _insert(store, "job_1", key_id="key_1", idempotency_key="idem", max_queued=10)
    assert first is not None
    again = await _insert(store, "job_2", key_id="key_1", idempotency_key="idem", max_queued=10)
    assert again is None
    await _assert_queued(store, 1)


async def test_queue_count_rolled_back_with_its_transaction(sqlite_store: Store) -> None:
    """Changes undone by a rollback (a failed transaction, a savepoint) leave it as it was."""
    store = sqlite_store
    await _insert(store, "job_1", max_queued=10)

    def failing(conn: sa.Connection) -> None:
        row = {c.name: None for c in jobs.c} | {
            "id": "job_2",
            "door": "native",
            "status": "queued",
            "model": "sonnet",
            "request": {},
            "attempts": 0,
            "window_retries": 0,
            "created_at": utcnow(),
        }
        conn.execute(jobs.insert(), row)
        conn.execute(jobs.update().where(jobs.c.id == "job_1").values(status="failed"))
        raise RuntimeError("undo")

    with pytest.raises(RuntimeError):
        await store.db.write(failing)
    await _assert_queued(store, 1)

    def savepoint(conn: sa.Connection) -> None:
        nested = conn.begin_nested()
        conn.execute(jobs.delete().where(jobs.c.id == "job_1"))
        nested.rollback()

    await store.db.write(savepoint)
    await _assert_queued(store, 1)


async def test_queue_count_sees_writes_of_another_connection(tmp_path: Path) -> None:
    """Another process's writes count too, and this one's capacity check sees them at once."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    here = await Store.open(url)
    there = await Store.open(url, migrate=False)
    try:
        await _insert(here, "job_1", max_queued=3)
        await _insert(there, "job_2", max_queued=3)
        await _assert_queued(here, 2)
        await _assert_queued(there, 2)
        await _insert(there, "job_3", max_queued=3)
        with pytest.raises(QueueAtCapacity):
            await _insert(here, "job_4", max_queued=3)
        with sqlite3.connect(tmp_path / "store.db") as raw:
            raw.execute("UPDATE jobs SET status = 'cancelled' WHERE id = 'job_1'")
        raw.close()
        await _assert_queued(here, 2)
        assert await _insert(here, "job_4", max_queued=3) is not None
        await _assert_queued(there, 3)
    finally:
        await there.close()
        await here.close()


async def test_queue_count_survives_a_random_mix_from_two_stores(tmp_path: Path) -> None:
    """A long seeded mix of every job change, from two stores on one file, never drifts."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    stores = [await Store.open(url), await Store.open(url, migrate=False)]
    rng = random.Random(14)  # noqa: S311 (a reproducible mix)
    try:
        for n in range(300):
            store = rng.choice(stores)
            now = utcnow() + timedelta(seconds=n)
            action = rng.randrange(6)
            ids = [
                r[0] for r in await store.db.read(lambda c: list(c.execute(sa.select(jobs.c.id))))
            ]
            if action <= 1 or not ids:
                with contextlib.suppress(QueueAtCapacity):
                    await _insert(store, f"job_{n}", max_queued=20, claim_for="node-1")
            elif action == 2:
                await store.jobs.claim_next(owner="n", now=now, lease_until=now)
            elif action == 3:
                await store.jobs.finish(rng.choice(ids), JobStatus.CANCELLED, now=now)
            elif action == 4:
                await store.jobs.transition(
                    rng.choice(ids), JobStatus.QUEUED, lease_expired_before=now + timedelta(1)
                )
            else:
                await store.jobs.delete(rng.choice(ids))
            kept, real = await _counts(store)
            # Recovery requeues past the limit (a claimed job keeps its place): no bound here.
            assert kept == real
    finally:
        for store in stores:
            await store.close()


async def test_queue_count_of_an_upgraded_database(tmp_path: Path) -> None:
    """Migrating a database that holds queued jobs starts the count from them (up and down)."""
    store = await Store.open(f"sqlite:///{tmp_path / 'store.db'}", migrate=False)
    try:
        await store.db.write(_migrate_to("0007"))
        now = utcnow()
        statuses = ["queued"] * 4 + ["processing", "completed", "failed", "cancelled"]
        base = {c.name: None for c in jobs.c} | {
            "door": "native",
            "model": "sonnet",
            "request": {},
            "attempts": 0,
            "window_retries": 0,
            "created_at": now,
        }
        rows = [base | {"id": f"job_{i}", "status": s} for i, s in enumerate(statuses)]
        await store.db.write(lambda conn: conn.execute(jobs.insert(), rows))
        assert "job_queue_depth" not in await _sqlite_objects(store)

        await store.db.migrate()
        await _assert_queued(store, 4)
        with pytest.raises(QueueAtCapacity):
            await _insert(store, "job_full", max_queued=4)
        assert await _insert(store, "job_fits", max_queued=5) is not None
        await _assert_queued(store, 5)

        await store.db.write(_migrate_to("0007", down=True))
        assert not {"job_queue_depth", *_TRIGGERS} & await _sqlite_objects(store)
        await store.db.write(lambda conn: conn.execute(jobs.delete().where(jobs.c.id == "job_0")))
        await store.db.migrate()
        await _assert_queued(store, 4)
    finally:
        await store.close()


async def test_queue_count_capacity_is_exact_after_churn(store: Store) -> None:
    """Whatever came and went before, the queue takes exactly ``max_queued`` jobs."""
    for n in range(4):
        await _insert(store, f"early_{n}", max_queued=3 if n < 3 else 10)
    now = utcnow()
    for _ in range(2):
        assert await store.jobs.claim_next(owner="n", now=now, lease_until=now) is not None
    assert await store.jobs.finish("early_3", JobStatus.CANCELLED, now=now) is not None
    # One job waits now; two more fit, the third does not.
    assert await _insert(store, "a", max_queued=3) is not None
    assert await _insert(store, "b", max_queued=3) is not None
    with pytest.raises(QueueAtCapacity):
        await _insert(store, "c", max_queued=3)
    assert await store.jobs.count(JobStatus.QUEUED) == 3
    assert await store.jobs.claim_next(owner="n", now=now, lease_until=now) is not None
    assert await _insert(store, "c", max_queued=3) is not None
    with pytest.raises(QueueAtCapacity):
        await _insert(store, "d", max_queued=3)


async def test_queue_count_submit_is_503_exactly_at_queue_size(gateway_factory: Any) -> None:
    """Submits get 503 queue_full once CCGATE_QUEUE_SIZE jobs wait; a cancel frees one place."""
    runner = FakeRunner(block=True)
    gw: Gateway = await gateway_factory(runner, CCGATE_QUEUE_SIZE=3, CCGATE_CONCURRENCY=1)

    async def submit() -> Any:
        return await gw.client.post("/api/v1/jobs", json={"prompt": "x"}, headers=gw.auth())

    running = await submit()
    assert running.status_code == 202
    while runner.running == 0:
        await asyncio.sleep(0.01)
    waiting = [await submit() for _ in range(3)]
    assert [r.status_code for r in waiting] == [202, 202, 202]
    full = await submit()
    assert full.status_code == 503 and full.json()["error"]["type"] == "queue_full"
    cancelled = await gw.client.post(
        f"/api/v1/jobs/{waiting[0].json()['job_id']}/cancel", headers=gw.auth()
    )
    assert cancelled.status_code == 200
    assert (await submit()).status_code == 202
    assert (await submit()).status_code == 503
    runner.released.set()
