"""SQL for jobs: inserts, guarded status transitions, claiming and leases."""

from __future__ import annotations

import dataclasses
import enum
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError

from ccgate.store import sqlite_fast as fast
from ccgate.store.engine import Database, Operation
from ccgate.store.events import JobEvent, append_terminal_event, insert_events
from ccgate.store.schema import (
    UTCDateTime,
    api_keys,
    job_events,
    job_queue_depth,
    jobs,
    webhook_deliveries,
)
from ccgate.store.sqlite_fast import is_sqlite
from ccgate.store.webhooks import insert_delivery

log = structlog.get_logger("ccgate.store")


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


class QueueAtCapacity(Exception):
    """The queue already holds the most jobs it may."""


def _key_usable(now: datetime | sa.BindParameter[datetime]) -> sa.ColumnElement[bool]:
    """The job's key may still have work run: neither revoked nor expired (no key: yes)."""
    return sa.or_(
        jobs.c.key_id.is_(None),
        sa.exists().where(
            api_keys.c.id == jobs.c.key_id,
            api_keys.c.revoked_at.is_(None),
            sa.or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now),
        ),
    )


_COUNT_QUEUED = (
    sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == JobStatus.QUEUED.value)
)
# On SQLite the queued jobs are not counted: triggers keep their number (schema.job_queue_depth).
_KEPT_QUEUED = sa.select(job_queue_depth.c.queued).where(job_queue_depth.c.id == 1)


def _key_revoked() -> sa.ColumnElement[bool]:
    return sa.exists().where(api_keys.c.id == jobs.c.key_id, api_keys.c.revoked_at.is_not(None))


# ``claim_next``'s statements, built once (building them, the alias of a 29-column table
# among them, cost several times what running them does); the time and the claim's values
# are bound at each call.
_NOW = sa.bindparam("now", type_=UTCDateTime())
_SERVED = sa.alias(jobs, "served")
# Fair between keys: the key served least recently goes first (never served: first of all),
# then its oldest job, so one key's flood cannot starve another key's job. Within a key, its
# batch requests wait behind its other jobs.
_LAST_SERVED = (
    sa.select(sa.func.max(_SERVED.c.started_at))
    .where(_SERVED.c.key_id == jobs.c.key_id)
    .scalar_subquery()
)
_CLAIM_CANDIDATES = (
    sa.select(jobs.c.id)
    .where(
        jobs.c.status == JobStatus.QUEUED.value,
        _key_usable(_NOW),
        sa.or_(jobs.c.retry_at.is_(None), jobs.c.retry_at <= _NOW),
    )
    .order_by(
        _LAST_SERVED.asc().nulls_first(),
        sa.case((jobs.c.door == "batch", 1), else_=0),
        jobs.c.created_at,
        jobs.c.id,
    )
    .limit(8)
)
_CLAIM_LOCK_FREE = (
    sa.select(jobs.c.id)
    .where(
        jobs.c.id.in_(sa.bindparam("ids", expanding=True)),
        jobs.c.status == JobStatus.QUEUED.value,
    )
    .with_for_update(skip_locked=True)
)
_CLAIM_ONE = (
    jobs.update()
    .where(jobs.c.id == sa.bindparam("claim_id"), jobs.c.status == JobStatus.QUEUED.value)
    .values(
        status=JobStatus.PROCESSING.value,
        started_at=sa.bindparam("claim_now", type_=UTCDateTime()),
        lease_owner=sa.bindparam("claim_owner"),
        lease_expires_at=sa.bindparam("claim_lease", type_=UTCDateTime()),
        attempts=jobs.c.attempts + 1,
    )
    .returning(*jobs.c)
)


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
    callback_url: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    stop_reason: str | None = None
    retry_after: float | None = None
    # A JSON job's answer as read when it ended: canonical JSON, or why it held none.
    result_json: str | None = None
    result_parse_error: str | None = None
    # Not claimed before this (a plan window closed); runs put back when a window closed.
    retry_at: datetime | None = None
    window_retries: int = 0


def _record(row: sa.Row[Any]) -> JobRecord:
    m = dict(row._mapping)
    m["status"] = JobStatus(m["status"])
    return JobRecord(**m)


class JobTable:
    """Every query ccgate makes about jobs."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(
        self,
        *,
        job_id: str,
        key_id: str | None,
        door: str,
        model: str,
        request: dict[str, Any],
        metadata: dict[str, Any] | None,
        now: datetime,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        max_queued: int | None = None,
        claim_for: str | None = None,
        lease_until: datetime | None = None,
        session_id: str | None = None,
        retry_at: datetime | None = None,
    ) -> JobRecord | None:
        """Store a new job and return it, in one transaction that also checks capacity.

        Raises QueueAtCapacity when ``max_queued`` jobs already wait. With ``claim_for``, a
        job submitted while nothing waits is stored already claimed by that node (status
        processing), saving the round trip of a later claim. Returns None when the key
        already has a job under ``idempotency_key``.
        """
        base = JobRecord(
            id=job_id,
            key_id=key_id,
            door=door,
            status=JobStatus.QUEUED,
            model=model,
            request=request,
            metadata=metadata,
            result=None,
            error_type=None,
            error_message=None,
            usage=None,
            cost_usd=None,
            session_id=session_id,
            attempts=0,
            duration_ms=None,
            created_at=now,
            started_at=None,
            finished_at=None,
            lease_owner=None,
            lease_expires_at=None,
            callback_url=callback_url,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            retry_at=retry_at,
        )

        def claimed() -> JobRecord:
            assert claim_for is not None
            return dataclasses.replace(
                base,
                status=JobStatus.PROCESSING,
                attempts=1,
                started_at=now,
                lease_owner=claim_for,
                lease_expires_at=lease_until,
            )

        def _usable(conn: sa.Connection) -> bool:
            # A direct start is a claim: a key revoked since its request was authenticated
            # leaves the job queued, where the sweep of revoked keys' work cancels it.
            if key_id is None:
                return True
            return (
                conn.execute(
                    sa.select(api_keys.c.id).where(
                        api_keys.c.id == key_id,
                        api_keys.c.revoked_at.is_(None),
                        sa.or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now),
                    )
                ).first()
                is not None
            )

        def op(conn: sa.Connection) -> JobRecord:
            if is_sqlite(conn):
                stored = _insert_sqlite(conn, base, max_queued, claim_for, lease_until)
                return claimed() if stored is JobStatus.PROCESSING else base
            record = base
            if max_queued is not None or claim_for is not None:
                waiting = int(conn.execute(_COUNT_QUEUED).scalar() or 0)
                if max_queued is not None and waiting >= max_queued:
                    raise QueueAtCapacity(waiting)
                if claim_for is not None and waiting == 0 and _usable(conn):
                    record = claimed()
            # Parameters rather than .values(): the compiled INSERT is cached and reused.
            conn.execute(jobs.insert(), {**record.__dict__, "status": record.status.value})
            return record

        try:
            return await self.db.write(op)
        except IntegrityError:
            if idempotency_key is None:
                raise
            return None

    async def by_idempotency_key(self, key_id: str, idempotency_key: str) -> JobRecord | None:
        """The key's job submitted under ``idempotency_key``, if any."""
        query = sa.select(jobs).where(
            jobs.c.key_id == key_id, jobs.c.idempotency_key == idempotency_key
        )

        def op(conn: sa.Connection) -> JobRecord | None:
            row = conn.execute(query).first()
            return _record(row) if row else None

        return await self.db.read(op)

    async def page(
        self, key_id: str, *, status: JobStatus | None, limit: int, offset: int
    ) -> tuple[list[JobRecord], int]:
        """One page of a key's jobs, newest first, and how many there are in all."""
        where = [jobs.c.key_id == key_id]
        if status is not None:
            where.append(jobs.c.status == status.value)
        rows_query = (
            sa.select(jobs)
            .where(*where)
            .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        count_query = sa.select(sa.func.count()).select_from(jobs).where(*where)

        def op(conn: sa.Connection) -> tuple[list[JobRecord], int]:
            return (
                [_record(r) for r in conn.execute(rows_query)],
                int(conn.execute(count_query).scalar() or 0),
            )

        return await self.db.read(op)

    async def delete(self, job_id: str) -> bool:
        """Remove a job with its events and deliveries."""
        return await self.db.write(lambda conn: _delete_jobs(conn, [job_id]) > 0)

    async def delete_finished_before(self, cutoff: datetime, batch: int = 500) -> int:
        """Remove jobs that ended before ``cutoff``; return how many went."""
        query = (
            sa.select(jobs.c.id)
            .where(
                jobs.c.finished_at < cutoff,
                jobs.c.status.in_([s.value for s in JobStatus if s.terminal]),
            )
            .limit(batch)
        )
        total = 0
        while True:

            def op(conn: sa.Connection) -> int:
                return _delete_jobs(conn, [r[0] for r in conn.execute(query)])

            deleted = await self.db.write(op)
            total += deleted
            if deleted < batch:
                return total

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
        query: sa.Select[Any] = (
            _KEPT_QUEUED
            if status is JobStatus.QUEUED and self.db.dialect == "sqlite"
            else sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == status.value)
        )

        def op(conn: sa.Connection) -> int:
            return int(conn.execute(query).scalar() or 0)

        return await self.db.read(op)

    async def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        lease_expired_before: datetime | None = None,
        **values: Any,
    ) -> bool:
        """Move a job to a non-terminal ``to`` if its status allows; False if it did not apply.

        With ``lease_expired_before``, only a job whose lease ran out before then moves, so a
        node that renewed its lease in the meantime keeps its job.
        """
        assert not to.terminal, "terminal states go through finish()"
        query = _guarded_update(job_id, to, lease_expired_before).values(status=to.value, **values)
        return await self.db.write(lambda conn: conn.execute(query).rowcount > 0)

    async def finish(
        self,
        job_id: str,
        to: JobStatus,
        *,
        now: datetime,
        pending: Sequence[JobEvent] = (),
        closing_seq: int | None = None,
        lease_expired_before: datetime | None = None,
        webhook: bool = True,
        known: JobRecord | None = None,
        also: Sequence[Callable[[JobRecord], Operation[None] | None]] = (),
        **values: Any,
    ) -> tuple[JobRecord, JobEvent] | None:
        """End a job in one transaction: its last chunks, the status change, the closing
        ``result`` event and, when it asked for one (and ``webhook``), its webhook delivery.

        ``known`` is the job as the node running it holds it (only its status and lease
        change meanwhile, both set here): the ended record is then built from it instead of
        read back. Each of ``also`` may give one more operation on the ended job (a session's
        new turn), run in the same transaction inside a savepoint, so its failure (returned
        with the rest, never raised) leaves the ending intact.

        Returns the ended job and its closing event, or None if the job had already ended
        (the guard keeps the first ending: a late completion never overwrites a cancel).
        """
        assert to.terminal
        ending = {"finished_at": now, "lease_owner": None, "lease_expires_at": None, **values}
        update = _guarded_update(job_id, to, lease_expired_before).values(status=to.value, **ending)
        query = update if known is not None else update.returning(*jobs.c)
        closing_data = {"status": to.value}

        def op(conn: sa.Connection) -> tuple[JobRecord, JobEvent] | None:
            if known is not None:
                if is_sqlite(conn):
                    moved = _finish_sqlite(conn, job_id, to, ending, lease_expired_before)
                else:
                    moved = conn.execute(query).rowcount > 0
                if not moved:
                    return None
                record = dataclasses.replace(known, status=to, **_as_stored(ending))
            else:
                row = conn.execute(query).first()
                if row is None:
                    return None
                record = _record(row)
            if closing_seq is not None:
                # The closing id is known: the last chunks and the closing event in one go.
                event = JobEvent(job_id, closing_seq, "result", closing_data, now)
                insert_events(conn, [*pending, event])
            else:
                insert_events(conn, pending)
                event = append_terminal_event(conn, job_id, "result", closing_data, now)
            if record.callback_url and webhook:
                insert_delivery(conn, job_id=job_id, url=record.callback_url, now=now)
            for hook in also:
                extra = hook(record)
                if extra is not None:
                    _in_savepoint(conn, extra, job_id)
            return record, event

        return await self.db.write(op)

    async def claim_next(
        self, *, owner: str, now: datetime, lease_until: datetime
    ) -> JobRecord | None:
        """Move the oldest queued job to processing under ``owner``'s lease and return it.

        Only jobs whose key is still usable (not revoked, not expired) are claimed, so a
        revocation written by any process is honoured; JobService sweeps the rest away.
        """
        postgres = self.db.dialect == "postgresql"
        moving = {"claim_now": now, "claim_owner": owner, "claim_lease": lease_until}

        def op(conn: sa.Connection) -> JobRecord | None:
            ids = [r[0] for r in conn.execute(_CLAIM_CANDIDATES, {"now": now})]
            if postgres and ids:
                # Skip rows another node is claiming right now instead of queueing behind it.
                free = {r[0] for r in conn.execute(_CLAIM_LOCK_FREE, {"ids": ids})}
                ids = [i for i in ids if i in free]
            for job_id in ids:
                row = conn.execute(_CLAIM_ONE, {"claim_id": job_id, **moving}).first()
                if row is not None:
                    return _record(row)
            return None

        return await self.db.write(op)

    async def hold_queued(self, until: datetime) -> int:
        """Keep every queued job from being claimed before ``until`` (a plan window closed
        until then); return how many jobs it holds."""
        query = (
            jobs.update()
            .where(
                jobs.c.status == JobStatus.QUEUED.value,
                sa.or_(jobs.c.retry_at.is_(None), jobs.c.retry_at < until),
            )
            .values(retry_at=until)
        )
        return await self.db.write(lambda conn: conn.execute(query).rowcount)

    async def renew_leases(self, owner: str, job_ids: Iterable[str], until: datetime) -> set[str]:
        """Extend the lease of jobs ``owner`` is still running; return those it still holds
        (a job missing from the answer was cancelled or taken over elsewhere)."""
        ids = list(job_ids)
        if not ids:
            return set()
        query = (
            jobs.update()
            .where(
                jobs.c.id.in_(ids),
                jobs.c.lease_owner == owner,
                jobs.c.status == JobStatus.PROCESSING.value,
            )
            .values(lease_expires_at=until)
            .returning(jobs.c.id)
        )
        return await self.db.write(lambda conn: {r[0] for r in conn.execute(query)})

    async def unfinished_of(self, key_ids: Iterable[str]) -> list[str]:
        """Ids of the queued and processing jobs of these keys, oldest first."""
        query = (
            sa.select(jobs.c.id)
            .where(
                jobs.c.key_id.in_(list(key_ids)),
                jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.PROCESSING.value]),
            )
            .order_by(jobs.c.created_at, jobs.c.id)
        )
        return await self.db.read(lambda conn: [r[0] for r in conn.execute(query)])

    async def unusable_work(self, now: datetime) -> list[str]:
        """Ids of jobs whose key lost access elsewhere: queued jobs of keys revoked or expired,
        processing jobs of keys revoked (a run admitted before its key expired may finish)."""
        queued = sa.and_(jobs.c.status == JobStatus.QUEUED.value, sa.not_(_key_usable(now)))
        running = sa.and_(jobs.c.status == JobStatus.PROCESSING.value, _key_revoked())
        query = (
            sa.select(jobs.c.id)
            .where(jobs.c.key_id.is_not(None), sa.or_(queued, running))
            .order_by(jobs.c.created_at, jobs.c.id)
            .limit(500)
        )
        return await self.db.read(lambda conn: [r[0] for r in conn.execute(query)])

    async def expired_leases(self, now: datetime) -> list[JobRecord]:
        """Processing jobs whose lease ran out: their node died or lost the database."""
        query = sa.select(jobs).where(
            jobs.c.status == JobStatus.PROCESSING.value, jobs.c.lease_expires_at < now
        )
        return await self.db.read(lambda conn: [_record(r) for r in conn.execute(query)])


def _delete_jobs(conn: sa.Connection, job_ids: list[str]) -> int:
    if not job_ids:
        return 0
    conn.execute(job_events.delete().where(job_events.c.job_id.in_(job_ids)))
    conn.execute(webhook_deliveries.delete().where(webhook_deliveries.c.job_id.in_(job_ids)))
    return conn.execute(jobs.delete().where(jobs.c.id.in_(job_ids))).rowcount


# -- SQLite: the statements of every job's start and end, straight on the driver -------------

_JOB_COLUMNS = tuple(c.name for c in jobs.c)
# The columns a job stored already claimed (a direct start) holds differently.
_CLAIM_COLUMNS = ("status", "attempts", "started_at", "lease_owner", "lease_expires_at")
_NO_LIMIT = 2**62
# One statement: read how many jobs wait (kept by triggers, schema.job_queue_depth: one row
# however long the queue, and current since the write lock is held), check the key is still
# usable, store the job claimed when nothing waits (a direct start), else queued, and nothing
# at all when the queue is full.
# Built once from the schema's own column names (no outside text in it).
_INSERT_SQLITE = (
    f"INSERT INTO jobs ({fast.column_list(_JOB_COLUMNS)}) SELECT "  # noqa: S608
    + ", ".join(
        f"CASE WHEN claimed THEN :claimed_{n} ELSE :{n} END" if n in _CLAIM_COLUMNS else f":{n}"
        for n in _JOB_COLUMNS
    )
    + " FROM (SELECT waiting, (:claim AND waiting = 0 AND usable) AS claimed FROM ("
    "SELECT (SELECT queued FROM job_queue_depth WHERE id = 1) AS waiting,"
    " (:key_id IS NULL OR EXISTS (SELECT 1 FROM api_keys"
    " WHERE api_keys.id = :key_id AND api_keys.revoked_at IS NULL"
    " AND (api_keys.expires_at IS NULL OR api_keys.expires_at > :created_at))) AS usable))"
    " WHERE waiting < :most RETURNING status"
)


def _insert_sqlite(
    conn: sa.Connection,
    base: JobRecord,
    max_queued: int | None,
    claim_for: str | None,
    lease_until: datetime | None,
) -> JobStatus:
    """Store ``base`` (or, with ``claim_for`` and nothing waiting, it claimed); return the
    status it was stored with."""
    converters = _job_converters(conn)
    params = dict(base.__dict__)
    params["status"] = base.status.value
    for name, process, stored_none in converters.columns:
        value = params[name]
        params[name] = stored_none if value is None else process(value)
    # A direct start is claimed at the job's creation: its started_at is its created_at.
    params["claimed_status"] = JobStatus.PROCESSING.value
    params["claimed_attempts"] = 1
    params["claimed_started_at"] = params["created_at"]
    params["claimed_lease_owner"] = claim_for
    params["claimed_lease_expires_at"] = (
        None if lease_until is None else converters.timestamp(lease_until)
    )
    params["claim"] = claim_for is not None
    params["most"] = max_queued if max_queued is not None else _NO_LIMIT
    rows = fast.execute(conn, _INSERT_SQLITE, params).fetchall()
    if not rows:
        raise QueueAtCapacity(max_queued)
    return JobStatus(rows[0][0])


Converter = tuple[str, Callable[[Any], Any], Any]


@dataclass(frozen=True)
class _Converters:
    """How a job's values go to the driver on one dialect, as ``fast.stored_values`` would
    convert them, looked up once: the columns whose values are converted, each with its bind
    processor and what it makes of None (a JSON column stores 'null'; no look-up for the
    columns whose values go as they are), and the timestamp columns' processor."""

    columns: tuple[Converter, ...]
    timestamp: Callable[[Any], Any]


_converters: weakref.WeakKeyDictionary[sa.Dialect, _Converters] = weakref.WeakKeyDictionary()


def _job_converters(conn: sa.Connection) -> _Converters:
    found = _converters.get(conn.dialect)
    if found is None:
        processors = fast.processors(conn, jobs)
        timestamp = processors["lease_expires_at"]
        assert timestamp is not None
        found = _converters[conn.dialect] = _Converters(
            tuple(
                (name, process, process(None))
                for name, process in processors.items()
                if process is not None
            ),
            timestamp,
        )
    return found


_finish_statements: dict[tuple[JobStatus, tuple[str, ...], bool], str] = {}


def _finish_sqlite(
    conn: sa.Connection,
    job_id: str,
    to: JobStatus,
    ending: dict[str, Any],
    lease_expired_before: datetime | None,
) -> bool:
    """The guarded update that ends a job, as ``_guarded_update`` builds it."""
    names = tuple(ending)
    key = (to, names, lease_expired_before is not None)
    sql = _finish_statements.get(key)
    if sql is None:
        if not set(names) <= set(_JOB_COLUMNS):
            raise ValueError(f"not columns of jobs: {sorted(set(names) - set(_JOB_COLUMNS))}")
        sources = ", ".join(f"'{s.value}'" for s in sorted(ALLOWED_FROM[to]))
        # Column names checked above and status values from the enum: no outside text.
        sql = (
            "UPDATE jobs SET status = :status, "  # noqa: S608
            + ", ".join(f'"{n}" = :{n}' for n in names)
            + f" WHERE id = :id AND status IN ({sources})"
            + (" AND lease_expires_at < :lease_before" if lease_expired_before else "")
        )
        _finish_statements[key] = sql
    params = fast.stored_values(conn, jobs, {"status": to.value, **ending})
    params["id"] = job_id
    if lease_expired_before is not None:
        lease = fast.stored_values(conn, jobs, {"lease_expires_at": lease_expired_before})
        params["lease_before"] = lease["lease_expires_at"]
    return fast.execute(conn, sql, params).rowcount > 0


def _as_stored(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` as reading them back would give them (a float column gives a float)."""
    retry_after = values.get("retry_after")
    if retry_after is not None:
        return {**values, "retry_after": float(retry_after)}
    return values


def _in_savepoint(conn: sa.Connection, operation: Operation[None], job_id: str) -> None:
    """Run ``operation`` inside a savepoint: if it fails, only its own writes are undone."""
    sqlite = is_sqlite(conn)
    # On SQLite, plain SQL on the driver (SQLAlchemy's nested transaction costs more there).
    savepoint = None if sqlite else conn.begin_nested()
    if sqlite:
        fast.execute(conn, "SAVEPOINT ccgate_ending", {})
    try:
        operation(conn)
    except Exception as exc:
        if savepoint is not None:
            savepoint.rollback()
        else:
            fast.execute(conn, "ROLLBACK TO ccgate_ending", {})
            fast.execute(conn, "RELEASE ccgate_ending", {})
        # By type only: a database error's text may quote the statement's parameters.
        log.error("job_ending_extra_failed", job_id=job_id, error=type(exc).__name__)
    else:
        if savepoint is not None:
            savepoint.commit()
        else:
            fast.execute(conn, "RELEASE ccgate_ending", {})


def _guarded_update(
    job_id: str, to: JobStatus, lease_expired_before: datetime | None = None
) -> sa.Update:
    sources = [s.value for s in ALLOWED_FROM[to]]
    query = jobs.update().where(jobs.c.id == job_id, jobs.c.status.in_(sources))
    if lease_expired_before is not None:
        query = query.where(jobs.c.lease_expires_at < lease_expired_before)
    return query
