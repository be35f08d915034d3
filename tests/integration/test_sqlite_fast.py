"""The statements run straight on the SQLite driver store values as SQLAlchemy stores them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from ccgate.store import JobStatus, Store
from ccgate.store.schema import jobs


async def test_fast_job_timestamps_on_a_whole_second_are_stored_as_sqlalchemy_stores_them(
    sqlite_store: Store,
) -> None:
    """A job stored and ended at a whole second keeps ``.000000`` in every timestamp, as
    SQLAlchemy writes it, so time comparisons in SQL see it where they should."""
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    stored = await sqlite_store.jobs.insert(
        job_id="job_fast",
        key_id=None,
        door="native",
        model="sonnet",
        request={"prompt": "hi"},
        metadata=None,
        now=now,
        claim_for="node",
        lease_until=now + timedelta(seconds=30),
    )
    assert stored is not None
    row = {**stored.__dict__, "id": "job_core", "status": stored.status.value}
    await sqlite_store.db.write(lambda conn: conn.execute(jobs.insert(), row))
    await sqlite_store.jobs.finish("job_fast", JobStatus.COMPLETED, now=now, known=stored)

    def raw(conn: sa.Connection) -> list[tuple[object, ...]]:
        query = sa.text("SELECT id, created_at, started_at, finished_at FROM jobs ORDER BY id")
        return [tuple(r) for r in conn.execute(query)]

    core, fast = await sqlite_store.db.read(raw)
    assert core[1:3] == fast[1:3] == ("2024-05-01 12:00:00.000000",) * 2
    assert fast[3] == "2024-05-01 12:00:00.000000"
