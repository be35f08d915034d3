"""The store's statements on every job's path (store, end, session turn), on both backends:
what the fast forms write reads back exactly as the general ones would."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from ccgate.clock import utcnow
from ccgate.policy import KeyPolicy
from ccgate.store import JobEvent, JobRecord, JobStatus, Store
from ccgate.store.engine import Operation
from ccgate.store.jobs import QueueAtCapacity
from ccgate.store.schema import jobs, sessions
from ccgate.store.sessions import save_session


async def _insert(store: Store, job_id: str, **extra: object) -> JobRecord | None:
    now = utcnow()
    return await store.jobs.insert(
        job_id=job_id,
        key_id=None,
        door="native",
        model="sonnet",
        request={"content": [{"type": "text", "text": "hi é"}], "stream": True},
        metadata=None,
        now=now,
        session_id="ses_1",
        lease_until=now + timedelta(seconds=30),
        **extra,  # type: ignore[arg-type]
    )


async def test_store_insert_returns_the_stored_job(store: Store) -> None:
    """The job an insert returns (queued, or claimed on a direct start) is the stored row."""
    queued = await _insert(store, "job_q", max_queued=10)
    claimed = await _insert(store, "job_c", max_queued=10, claim_for="node-1")
    assert queued is not None and queued.status is JobStatus.QUEUED
    # job_q waits, so job_c is not started directly either.
    assert claimed is not None and claimed.status is JobStatus.QUEUED
    assert await store.jobs.get("job_q") == queued
    assert await store.jobs.get("job_c") == claimed


async def test_store_insert_claims_directly_only_when_nothing_waits(store: Store) -> None:
    """With nothing queued a direct start stores the job processing under the node's lease."""
    started = await _insert(store, "job_1", max_queued=10, claim_for="node-1")
    assert started is not None and started.status is JobStatus.PROCESSING
    assert started.lease_owner == "node-1" and started.attempts == 1
    assert await store.jobs.get("job_1") == started


async def test_store_insert_refuses_past_capacity(store: Store) -> None:
    """The capacity check and the insert are one: a full queue stores nothing more."""
    await _insert(store, "job_1", max_queued=1)
    with pytest.raises(QueueAtCapacity):
        await _insert(store, "job_2", max_queued=1)
    assert await store.jobs.get("job_2") is None


async def test_store_claim_judges_each_call_at_its_own_time(store: Store) -> None:
    """A claim weighs key expiry and plan-window holds at the time it is given, call by
    call: nothing is claimable at one time, the key's job at an earlier one, the held job
    once its hold has passed; a claimed job reads back as claim_next returned it."""
    base = utcnow()
    await store.keys.insert(
        key_id="key_soon",
        name="soon",
        prefix="soon",
        secret_hash="h" * 64,
        now=base,
        policy=KeyPolicy(expires_at=base + timedelta(seconds=60)),
    )
    await store.jobs.insert(
        job_id="job_key",
        key_id="key_soon",
        door="native",
        model="sonnet",
        request={},
        metadata=None,
        now=base,
    )
    await _insert(store, "job_held", retry_at=base + timedelta(seconds=120))

    async def claim(after_secs: int) -> JobRecord | None:
        now = base + timedelta(seconds=after_secs)
        return await store.jobs.claim_next(
            owner="node-1", now=now, lease_until=now + timedelta(seconds=30)
        )

    assert await claim(90) is None
    first = await claim(30)
    assert first is not None and first.id == "job_key"
    assert first.started_at == base + timedelta(seconds=30)
    assert first == await store.jobs.get("job_key")
    assert await claim(90) is None
    second = await claim(150)
    assert second is not None and second.id == "job_held"
    assert (second.status, second.attempts, second.lease_owner) == (
        JobStatus.PROCESSING,
        1,
        "node-1",
    )
    assert second.lease_expires_at == base + timedelta(seconds=180)
    assert second == await store.jobs.get("job_held")


async def test_store_insert_same_idempotency_key_returns_none(store: Store) -> None:
    """A second job under the key's Idempotency-Key is not stored (the driver's error is
    seen as the constraint it is)."""
    now = utcnow()
    await store.keys.insert(key_id="key_1", name="k", prefix="p", secret_hash="h" * 64, now=now)
    for job_id, expected in (("job_1", True), ("job_2", False)):
        stored = await store.jobs.insert(
            job_id=job_id,
            key_id="key_1",
            door="native",
            model="sonnet",
            request={},
            metadata=None,
            now=now,
            idempotency_key="once",
        )
        assert (stored is not None) is expected


async def test_store_finish_of_known_job_equals_a_reread(store: Store) -> None:
    """Ending a job the node holds builds the ended record without reading it back; it is
    what a read gives, events and closing event stored with it."""
    job = await _insert(store, "job_1", max_queued=10, claim_for="node-1")
    assert job is not None
    now = utcnow()
    chunk = JobEvent("job_1", 1, "chunk", {"text": "pong"}, now)
    ended = await store.jobs.finish(
        "job_1",
        JobStatus.COMPLETED,
        now=now,
        pending=[chunk],
        closing_seq=2,
        known=job,
        result="pong",
        usage={"input_tokens": 3, "output_tokens": 1},
        cost_usd=0.25,
        retry_after=5,
        duration_ms=30,
    )
    assert ended is not None
    record, closing = ended
    assert record == await store.jobs.get("job_1")
    assert record.retry_after == 5.0 and isinstance(record.retry_after, float)
    assert closing.seq == 2
    assert [(e.seq, e.type) for e in await store.events.after("job_1", 0)] == [
        (1, "chunk"),
        (2, "result"),
    ]


async def test_store_finish_of_known_job_keeps_the_first_ending(store: Store) -> None:
    """The guard holds on the fast form too: a completion after a cancel changes nothing."""
    job = await _insert(store, "job_1", max_queued=10, claim_for="node-1")
    assert job is not None
    assert await store.jobs.finish("job_1", JobStatus.CANCELLED, now=utcnow()) is not None
    late = await store.jobs.finish(
        "job_1", JobStatus.COMPLETED, now=utcnow(), closing_seq=5, known=job, result="late"
    )
    assert late is None
    stored = await store.jobs.get("job_1")
    assert stored is not None and stored.status is JobStatus.CANCELLED and stored.result is None


async def test_store_finish_runs_extra_operations_in_its_transaction(store: Store) -> None:
    """An extra operation given to finish (a session's turn) is written with the ending; one
    that fails is undone alone and the job still ends."""
    job = await _insert(store, "job_1", max_queued=10, claim_for="node-1")
    assert job is not None
    now = utcnow()

    def turn(ended: JobRecord) -> Operation[None]:
        assert ended.status is JobStatus.COMPLETED
        return save_session(
            session_id="ses_1",
            key_id=None,
            model="sonnet",
            system_prompt=None,
            messages=[{"role": "user", "content": "hi"}],
            now=now,
            expires_at=now + timedelta(hours=1),
        )

    def broken(ended: JobRecord) -> Operation[None]:
        def op(conn: sa.Connection) -> None:
            conn.execute(sa.update(sessions).values(turns=99))
            conn.execute(sa.text("SELECT * FROM no_such_table"))

        return op

    ended = await store.jobs.finish(
        "job_1", JobStatus.COMPLETED, now=now, known=job, also=[turn, broken], result="ok"
    )
    assert ended is not None
    session = await store.sessions.get("ses_1", key_id=None, now=now)
    assert session is not None and session.turns == 1
    assert (await store.jobs.count(JobStatus.COMPLETED)) == 1


async def test_store_session_save_keeps_the_longer_conversation(store: Store) -> None:
    """The one-statement save creates a session, replaces it with a longer conversation and
    never with a shorter one."""
    now = utcnow()
    user = {"role": "user", "content": "q"}
    answer = {"role": "assistant", "content": "a"}
    for messages in ([user, answer, user, answer], [user, answer]):
        await store.sessions.save(
            session_id="ses_1",
            key_id=None,
            model="sonnet",
            system_prompt="s",
            messages=messages,
            now=now,
            expires_at=now + timedelta(hours=1),
        )
    session = await store.sessions.get("ses_1", key_id=None, now=now)
    assert session is not None and session.turns == 2 and len(session.messages) == 4


async def test_store_fast_rows_are_stored_as_sqlalchemy_stores_them(
    sqlite_store: Store,
) -> None:
    """On SQLite the driver-level insert writes each column in the very form SQLAlchemy's
    own insert writes (timestamps, JSON, NULL JSON)."""
    await _insert(sqlite_store, "job_fast", max_queued=10)
    fast = await sqlite_store.jobs.get("job_fast")
    assert fast is not None
    row = {**fast.__dict__, "id": "job_core", "status": fast.status.value}
    await sqlite_store.db.write(lambda conn: conn.execute(jobs.insert(), row))

    def raw(conn: sa.Connection) -> list[tuple[object, ...]]:
        query = sa.text(
            "SELECT request, metadata, created_at, lease_expires_at FROM jobs ORDER BY id"
        )
        return [tuple(r) for r in conn.execute(query)]

    core, fast_row = await sqlite_store.db.read(raw)
    assert core == fast_row


async def test_store_failed_operation_leaves_the_next_one_working(sqlite_store: Store) -> None:
    """A write that fails mid-transaction is rolled back and the next one runs normally."""

    def failing(conn: sa.Connection) -> None:
        conn.execute(sa.update(sessions).values(turns=1))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await sqlite_store.db.write(failing)
    assert await _insert(sqlite_store, "job_1") is not None
    assert await sqlite_store.jobs.get("job_1") is not None
