"""SQL for jobs: inserts, guarded status transitions, claiming and leases."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ccgate.store.engine import Database
from ccgate.store.schema import jobs


class JobStatus(enum.StrEnum):
    """Where a job is in its life; the last three are terminal."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True once nothing more will happen to the job."""
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


# The states each status may be entered from; the database update enforces it, so a cancel
# and a completion racing each other can never overwrite one another.
ALLOWED_FROM: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.PROCESSING}),
    JobStatus.PROCESSING: frozenset({JobStatus.QUEUED}),
    JobStatus.COMPLETED: frozenset({JobStatus.PROCESSING}),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED, JobStatus.PROCESSING}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED, JobStatus.PROCESSING}),
}


@dataclass(frozen=True)
class JobRecord:
    """A job as stored."""

    id: str
    key_id: str | None
    door: str
    status: JobStatus
    model: str
    request: dict[str, Any]
    metadata: dict[str, Any] | None
    result: str | None
    error_type: str | None
    error_message: str | None
    usage: dict[str, int] | None
    cost_usd: float | None
    session_id: str | None
    attempts: int
    duration_ms: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None


def _record(row: sa.Row[Any]) -> JobRecord:
    m = dict(row._mapping)
    m["status"] = JobStatus(m["status"])
    return JobRecord(**m)


class JobTable:
    """Every query ccgate makes about jobs."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, *, job_id: str, key_id: str | None, door: str, model: str,
                     request: dict[str, Any], metadata: dict[str, Any] | None,
                     now: datetime, claim_for: str | None = None,
                     lease_until: datetime | None = None) -> JobRecord:
        """Store a new job and return it: queued, or already claimed by ``claim_for``."""
        claimed = claim_for is not None
        record = JobRecord(
            id=job_id, key_id=key_id, door=door,
            status=JobStatus.PROCESSING if claimed else JobStatus.QUEUED, model=model,
            request=request, metadata=metadata, result=None, error_type=None,
            error_message=None, usage=None, cost_usd=None, session_id=None,
            attempts=1 if claimed else 0, duration_ms=None, created_at=now,
            started_at=now if claimed else None, finished_at=None, lease_owner=claim_for,
            lease_expires_at=lease_until if claimed else None)
        values = {**record.__dict__, "status": record.status.value}
        await self.db.write(lambda conn: conn.execute(jobs.insert().values(**values)))
        return record

    async def get(self, job_id: str, key_id: str | None = None) -> JobRecord | None:
        """Return a job; with ``key_id``, only if that key owns it."""
        query = sa.select(jobs).where(jobs.c.id == job_id)
        if key_id is not None:
            query = query.where(jobs.c.key_id == key_id)

        def op(conn: sa.Connection) -> JobRecord | None:
            row = conn.execute(query).first()
            return _record(row) if row else None

        return await self.db.read(op)

    async def count(self, status: JobStatus) -> int:
        """How many jobs are in ``status``."""
        query = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == status.value)

        def op(conn: sa.Connection) -> int:
            return int(conn.execute(query).scalar() or 0)

        return await self.db.read(op)

    async def transition(self, job_id: str, to: JobStatus, *,
                         lease_expired_before: datetime | None = None, **values: Any) -> bool:
        """Move a job to ``to`` if its current status allows it; False if it did not apply.

        With ``lease_expired_before``, only a job whose lease ran out before then moves, so a
        node that renewed its lease in the meantime keeps its job.
        """
        query = _guarded_update(job_id, to)
        if lease_expired_before is not None:
            query = query.where(jobs.c.lease_expires_at < lease_expired_before)
        query = query.values(status=to.value, **values)
        return await self.db.write(lambda conn: conn.execute(query).rowcount > 0)

    async def finish(self, job_id: str, to: JobStatus, **values: Any) -> JobRecord | None:
        """Like ``transition``, returning the updated job, or None if it did not apply."""
        query = _guarded_update(job_id, to).values(status=to.value, **values).returning(*jobs.c)

        def op(conn: sa.Connection) -> JobRecord | None:
            row = conn.execute(query).first()
            return _record(row) if row is not None else None

        return await self.db.write(op)

    async def claim_next(self, *, owner: str, now: datetime,
                         lease_until: datetime) -> JobRecord | None:
        """Move the oldest queued job to processing under ``owner``'s lease and return it."""
        pick = (sa.select(jobs.c.id).where(jobs.c.status == JobStatus.QUEUED.value)
                .order_by(jobs.c.created_at, jobs.c.id).limit(1))
        if self.db.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)

        def op(conn: sa.Connection) -> JobRecord | None:
            job_id = conn.execute(pick).scalar()
            if job_id is None:
                return None
            row = conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.PROCESSING.value, started_at=now, lease_owner=owner,
                        lease_expires_at=lease_until, attempts=jobs.c.attempts + 1)
                .returning(*jobs.c)).first()
            return _record(row) if row is not None else None

        return await self.db.write(op)

    async def renew_leases(self, owner: str, job_ids: Iterable[str], until: datetime) -> None:
        """Extend the lease of jobs ``owner`` is still running."""
        ids = list(job_ids)
        if not ids:
            return
        query = (jobs.update()
                 .where(jobs.c.id.in_(ids), jobs.c.lease_owner == owner,
                        jobs.c.status == JobStatus.PROCESSING.value)
                 .values(lease_expires_at=until))
        await self.db.write(lambda conn: conn.execute(query))

    async def expired_leases(self, now: datetime) -> list[JobRecord]:
        """Processing jobs whose lease ran out: their node died or lost the database."""
        query = sa.select(jobs).where(jobs.c.status == JobStatus.PROCESSING.value,
                                      jobs.c.lease_expires_at < now)
        return await self.db.read(lambda conn: [_record(r) for r in conn.execute(query)])


def _guarded_update(job_id: str, to: JobStatus) -> sa.Update:
    sources = [s.value for s in ALLOWED_FROM[to]]
    return jobs.update().where(jobs.c.id == job_id, jobs.c.status.in_(sources))
