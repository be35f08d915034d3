"""SQL for job events: the numbered stream (status, chunks, result) SSE clients replay."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ccgate.store import sqlite_fast as fast
from ccgate.store.engine import Database
from ccgate.store.schema import job_events
from ccgate.store.sqlite_fast import is_sqlite


@dataclass(frozen=True)
class JobEvent:
    """One event of a job: ``seq`` is its SSE id, unique and increasing within the job."""

    job_id: str
    seq: int
    type: str
    data: dict[str, Any]
    at: datetime


_INSERT_IGNORING_POSTGRES = pg_insert(job_events).on_conflict_do_nothing()
_INSERT_IGNORING_SQLITE = (
    "INSERT OR IGNORE INTO job_events (job_id, seq, type, data, at) "
    "VALUES (:job_id, :seq, :type, :data, :at)"
)


def insert_events(conn: sa.Connection, events: Iterable[JobEvent]) -> None:
    """Write events inside the caller's transaction; an id already stored is left as it is."""
    rows = [
        {"job_id": e.job_id, "seq": e.seq, "type": e.type, "data": e.data, "at": e.at}
        for e in events
    ]
    if not rows:
        return
    if is_sqlite(conn):  # on every job's end: straight to the driver (store/sqlite_fast.py)
        fast.execute_many(
            conn, _INSERT_IGNORING_SQLITE, [fast.stored_values(conn, job_events, r) for r in rows]
        )
    else:
        conn.execute(_INSERT_IGNORING_POSTGRES, rows)


def append_terminal_event(
    conn: sa.Connection,
    job_id: str,
    type_: str,
    data: dict[str, Any],
    at: datetime,
    seq: int | None = None,
) -> JobEvent:
    """Add the job's closing event inside the caller's transaction, with ``seq`` or else the
    next free id."""
    if seq is None:
        seq = (
            int(
                conn.execute(
                    sa.select(sa.func.coalesce(sa.func.max(job_events.c.seq), 0)).where(
                        job_events.c.job_id == job_id
                    )
                ).scalar()
                or 0
            )
            + 1
        )
    event = JobEvent(job_id, seq, type_, data, at)
    insert_events(conn, [event])
    return event


class EventTable:
    """Reads and writes the events of jobs."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def append(self, events: Sequence[JobEvent]) -> None:
        """Store a batch of events (of any jobs) in one transaction."""
        if events:
            await self.db.write(lambda conn: insert_events(conn, events))

    async def after(self, job_id: str, seq: int, limit: int = 1000) -> list[JobEvent]:
        """The job's events with an id above ``seq``, in order."""
        query = (
            sa.select(job_events)
            .where(job_events.c.job_id == job_id, job_events.c.seq > seq)
            .order_by(job_events.c.seq)
            .limit(limit)
        )
        return await self.db.read(
            lambda conn: [JobEvent(**r._mapping) for r in conn.execute(query)]
        )

    async def drop_chunks(self, job_id: str) -> None:
        """Forget the text of an earlier attempt, so a replay holds only the current one."""
        query = job_events.delete().where(
            job_events.c.job_id == job_id, job_events.c.type == "chunk"
        )
        await self.db.write(lambda conn: conn.execute(query))

    async def last_seq(self, job_ids: Sequence[str]) -> dict[str, int]:
        """The highest event id of each job that has events."""
        if not job_ids:
            return {}
        query = (
            sa.select(job_events.c.job_id, sa.func.max(job_events.c.seq))
            .where(job_events.c.job_id.in_(list(job_ids)))
            .group_by(job_events.c.job_id)
        )
        return await self.db.read(lambda conn: {r[0]: int(r[1]) for r in conn.execute(query)})
