"""The store contract: the same behaviour on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ccgate.clock import utcnow
from ccgate.store import JobStatus, Store
from ccgate.store.schema import metadata, on_dialect


async def _job(store: Store, job_id: str = "job_1", key_id: str | None = None) -> None:
    await store.jobs.insert(
        job_id=job_id,
        key_id=key_id,
        door="native",
        model="sonnet",
        request={"content": [{"type": "text", "text": "hi"}]},
        metadata={"a": 1},
        now=utcnow(),
    )


async def test_store_migrated_schema_matches_the_models(store: Store) -> None:
    """Alembic's migrations build exactly the schema the code declares."""

    def diff(sync_conn: sa.Connection) -> list[object]:
        dialect = sync_conn.dialect.name

        def declared_here(obj: object, *_: object) -> bool:
            # A table declared for other databases only (SQLite's kept queue count).
            return not isinstance(obj, sa.Table) or on_dialect(obj, dialect)

        context = MigrationContext.configure(sync_conn, opts={"include_object": declared_here})
        return list(compare_metadata(context, metadata))

    assert await store.db.read(diff) == []


async def test_store_keys_round_trip_and_revoke(store: Store) -> None:
    """A key is found by hash until revoked; revoking twice reports nothing to do."""
    now = utcnow()
    await store.keys.insert(
        key_id="key_1", name="app", prefix="ccg_abc", secret_hash="h" * 64, now=now
    )
    found = await store.keys.by_hash("h" * 64)
    assert found is not None and found.name == "app" and found.active
    assert found.created_at.tzinfo is not None
    assert await store.keys.revoke("app", utcnow())
    assert not await store.keys.revoke("app", utcnow())
    revoked = await store.keys.by_name("app")
    assert revoked is not None and not revoked.active


async def test_store_job_keeps_request_and_metadata(store: Store) -> None:
    """A job's JSON request and metadata come back as they went in."""
    await _job(store)
    job = await store.jobs.get("job_1")
    assert job is not None
    assert job.status is JobStatus.QUEUED
    assert job.request == {"content": [{"type": "text", "text": "hi"}]}
    assert job.metadata == {"a": 1}


async def test_store_job_is_invisible_to_other_keys(store: Store) -> None:
    """Looking a job up under another key finds nothing."""
    now = utcnow()
    for key_id in ("key_a", "key_b"):
        await store.keys.insert(
            key_id=key_id, name=key_id, prefix="p", secret_hash=key_id * 8, now=now
        )
    await _job(store, key_id="key_a")
    assert await store.jobs.get("job_1", key_id="key_a") is not None
    assert await store.jobs.get("job_1", key_id="key_b") is None


async def test_store_transitions_are_guarded(store: Store) -> None:
    """A cancelled job cannot be completed afterwards, and a queued one cannot complete."""
    await _job(store)
    assert await store.jobs.finish("job_1", JobStatus.COMPLETED, now=utcnow(), result="x") is None
    assert await store.jobs.finish("job_1", JobStatus.CANCELLED, now=utcnow()) is not None
    assert (
        await store.jobs.finish("job_1", JobStatus.COMPLETED, now=utcnow(), result="late") is None
    )
    job = await store.jobs.get("job_1")
    assert job is not None and job.status is JobStatus.CANCELLED and job.result is None


async def test_store_claim_takes_oldest_once(store: Store) -> None:
    """Claiming hands out the oldest queued job, each job once, with a lease and an attempt."""
    await _job(store, "job_1")
    await _job(store, "job_2")
    now = utcnow()
    first = await store.jobs.claim_next(owner="n1", now=now, lease_until=now)
    second = await store.jobs.claim_next(owner="n2", now=now, lease_until=now)
    assert first is not None and second is not None
    assert (first.id, second.id) == ("job_1", "job_2")
    assert first.status is JobStatus.PROCESSING and first.attempts == 1
    assert first.lease_owner == "n1"
    assert await store.jobs.claim_next(owner="n1", now=now, lease_until=now) is None


async def test_store_expired_leases_and_renewal(store: Store) -> None:
    """A renewed lease is not expired; a lapsed one is, and requeueing respects renewal."""
    await _job(store)
    now = utcnow()
    await store.jobs.claim_next(owner="n1", now=now, lease_until=now - timedelta(seconds=1))
    assert [j.id for j in await store.jobs.expired_leases(now)] == ["job_1"]
    await store.jobs.renew_leases("n1", ["job_1"], now + timedelta(seconds=30))
    assert await store.jobs.expired_leases(now) == []
    assert not await store.jobs.transition("job_1", JobStatus.QUEUED, lease_expired_before=now)


async def test_store_count_by_status(store: Store) -> None:
    """Counting by status sees a claim move a job from queued to processing."""
    await _job(store, "job_1")
    await _job(store, "job_2")
    now = utcnow()
    await store.jobs.claim_next(owner="n1", now=now, lease_until=now)
    assert await store.jobs.count(JobStatus.QUEUED) == 1
    assert await store.jobs.count(JobStatus.PROCESSING) == 1


async def test_store_audit_rows_append(store: Store) -> None:
    """Audit rows are kept newest first."""
    from ccgate.store import AuditEntry

    await store.audit.append_many(
        [
            AuditEntry(
                at=utcnow(),
                request_id=f"req_{n}",
                door="native",
                route="/api/v1/run",
                http_status=200,
                duration_ms=n,
            )
            for n in range(3)
        ]
    )
    rows = await store.audit.recent(2)
    assert [r["request_id"] for r in rows] == ["req_2", "req_1"]
