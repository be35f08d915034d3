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
                     now: datetime) -> JobRecord:
        """Store a new queued job."""
        values = {"id": job_id, "key_id": key_id, "door": door, "status": JobStatus.QUEUED.value,
                      "model": model, "request": request, "metadata": metadata, "created_at": now,
                      "attempts": 0}
        async with self.db.write() as conn:
            await conn.execute(jobs.insert().values(**values))
        return await self._must_get(job_id)

    async def get(self, job_id: str, key_id: str | None = None) -> JobRecord | None:
        """Return a job; with ``key_id``, only if that key owns it."""
        query = sa.select(jobs).where(jobs.c.id == job_id)
        if key_id is not None:
            query = query.where(jobs.c.key_id == key_id)
        async with self.db.read() as conn:
            row = (await conn.execute(query)).first()
        return _record(row) if row else None

    async def _must_get(self, job_id: str) -> JobRecord:
        record = await self.get(job_id)
        assert record is not None, job_id
        return record

    async def count(self, status: JobStatus) -> int:
        """How many jobs are in ``status``."""
        async with self.db.read() as conn:
            value = await conn.scalar(
                sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == status.value))
        return int(value or 0)

    async def transition(self, job_id: str, to: JobStatus, *,
                         lease_expired_before: datetime | None = None, **values: Any) -> bool:
        """Move a job to ``to`` if its current status allows it; False if it did not apply.

        With ``lease_expired_before``, only a job whose lease ran out before then moves, so a
        node that renewed its lease in the meantime keeps its job.
        """
        sources = [s.value for s in ALLOWED_FROM[to]]
        query = jobs.update().where(jobs.c.id == job_id, jobs.c.status.in_(sources))
        if lease_expired_before is not None:
            query = query.where(jobs.c.lease_expires_at < lease_expired_before)
        async with self.db.write() as conn:
            result = await conn.execute(query.values(status=to.value, **values))
        return result.rowcount > 0

    async def claim_next(self, *, owner: str, now: datetime,
                         lease_until: datetime) -> JobRecord | None:
        """Move the oldest queued job to processing under ``owner``'s lease and return it."""
        pick = (sa.select(jobs.c.id).where(jobs.c.status == JobStatus.QUEUED.value)
                .order_by(jobs.c.created_at, jobs.c.id).limit(1))
        if self.db.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        async with self.db.write() as conn:
            job_id = await conn.scalar(pick)
            if job_id is None:
                return None
            result = await conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.PROCESSING.value, started_at=now, lease_owner=owner,
                        lease_expires_at=lease_until, attempts=jobs.c.attempts + 1))
            if result.rowcount == 0:
                return None
        return await self._must_get(job_id)

    async def renew_leases(self, owner: str, job_ids: Iterable[str], until: datetime) -> None:
        """Extend the lease of jobs ``owner`` is still running."""
        ids = list(job_ids)
        if not ids:
            return
        async with self.db.write() as conn:
            await conn.execute(
                jobs.update()
                .where(jobs.c.id.in_(ids), jobs.c.lease_owner == owner,
                       jobs.c.status == JobStatus.PROCESSING.value)
                .values(lease_expires_at=until))

    async def expired_leases(self, now: datetime) -> list[JobRecord]:
        """Processing jobs whose lease ran out: their node died or lost the database."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                sa.select(jobs).where(jobs.c.status == JobStatus.PROCESSING.value,
                                      jobs.c.lease_expires_at < now))
            return [_record(r) for r in rows]
