"""SQL for Message Batches: batches, their requests, feeding, results and clean-up.

A request moves ``pending`` -> ``queued`` (fed; ``job_id`` names its job once submitted) ->
``succeeded`` | ``errored`` | ``canceled`` | ``expired``. Every move is a guarded ``UPDATE``
on the state it leaves, so two nodes (or a node and its restart) never record one twice.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ccgate.store.engine import Database
from ccgate.store.jobs import JobStatus, _delete_jobs
from ccgate.store.schema import batch_requests, batches, jobs

# Rows per INSERT of a batch's requests (all in one transaction).
_INSERT_CHUNK = 2000
# Requests purged per transaction when a batch is deleted, so the loop is never held long.
_PURGE_CHUNK = 5000


class BatchStatus(enum.StrEnum):
    """A batch's ``processing_status``."""

    IN_PROGRESS = "in_progress"
    CANCELING = "canceling"
    ENDED = "ended"


class RequestState(enum.StrEnum):
    """Where one request of a batch is; the last four are final."""

    PENDING = "pending"
    QUEUED = "queued"
    SUCCEEDED = "succeeded"
    ERRORED = "errored"
    CANCELED = "canceled"
    EXPIRED = "expired"


FINAL_STATES = (
    RequestState.SUCCEEDED,
    RequestState.ERRORED,
    RequestState.CANCELED,
    RequestState.EXPIRED,
)
_OPEN = (BatchStatus.IN_PROGRESS.value, BatchStatus.CANCELING.value)
_UNFINISHED = (RequestState.PENDING.value, RequestState.QUEUED.value)


@dataclass(frozen=True)
class RequestCounts:
    """How many of a batch's requests are in each of the SDK's ``request_counts``."""

    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0


@dataclass(frozen=True)
class BatchRecord:
    """A batch as stored, with its request counts."""

    id: str
    key_id: str
    status: BatchStatus
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    cancel_initiated_at: datetime | None
    counts: RequestCounts


@dataclass(frozen=True)
class FedRequest:
    """A request just taken for feeding (state ``queued``, no job yet)."""

    batch_id: str
    seq: int
    custom_id: str
    params: dict[str, Any]


@dataclass(frozen=True)
class ResultRow:
    """One ended request: its custom_id, final state and stored result object."""

    seq: int
    custom_id: str
    state: RequestState
    result: dict[str, Any] | None


@dataclass(frozen=True)
class Unrecorded:
    """A fed request whose job ended (or vanished) without its result being recorded."""

    batch_id: str
    key_id: str
    seq: int
    job_id: str | None
    job_exists: bool
    # Taken for feeding before the cutoff and still without a job.
    stale: bool


def _counts(conn: sa.Connection, batch_ids: Sequence[str]) -> dict[str, RequestCounts]:
    query = (
        sa.select(batch_requests.c.batch_id, batch_requests.c.state, sa.func.count())
        .where(batch_requests.c.batch_id.in_(list(batch_ids)))
        .group_by(batch_requests.c.batch_id, batch_requests.c.state)
    )
    raw: dict[str, dict[str, int]] = {b: {} for b in batch_ids}
    for batch_id, state, n in conn.execute(query):
        name = "processing" if state in _UNFINISHED else state
        raw[batch_id][name] = raw[batch_id].get(name, 0) + int(n)
    return {b: RequestCounts(**c) for b, c in raw.items()}


def _records(conn: sa.Connection, rows: Sequence[sa.Row[Any]]) -> list[BatchRecord]:
    counts = _counts(conn, [r.id for r in rows]) if rows else {}
    return [
        BatchRecord(
            id=r.id,
            key_id=r.key_id,
            status=BatchStatus(r.status),
            created_at=r.created_at,
            expires_at=r.expires_at,
            ended_at=r.ended_at,
            cancel_initiated_at=r.cancel_initiated_at,
            counts=counts[r.id],
        )
        for r in rows
    ]


def _visible(batch_id: str, key_id: str | None) -> sa.ColumnElement[bool]:
    where = sa.and_(batches.c.id == batch_id, batches.c.deleted_at.is_(None))
    return where if key_id is None else sa.and_(where, batches.c.key_id == key_id)


def _request(batch_id: str, seq: int) -> sa.ColumnElement[bool]:
    return sa.and_(batch_requests.c.batch_id == batch_id, batch_requests.c.seq == seq)


def _unfed(batch_id: str, seq: int) -> sa.ColumnElement[bool]:
    return sa.and_(
        _request(batch_id, seq),
        batch_requests.c.state == RequestState.QUEUED.value,
        batch_requests.c.job_id.is_(None),
    )


class BatchTable:
    """Every query ccgate makes about Message Batches."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(
        self,
        *,
        batch_id: str,
        key_id: str,
        now: datetime,
        expires_at: datetime,
        requests: Sequence[tuple[str, dict[str, Any]]],
    ) -> BatchRecord:
        """Store a batch and all its ``(custom_id, params)`` requests in one transaction."""

        def op(conn: sa.Connection) -> None:
            conn.execute(
                batches.insert(),
                {
                    "id": batch_id,
                    "key_id": key_id,
                    "status": BatchStatus.IN_PROGRESS.value,
                    "created_at": now,
                    "expires_at": expires_at,
                },
            )
            pending = RequestState.PENDING.value
            for start in range(0, len(requests), _INSERT_CHUNK):
                conn.execute(
                    batch_requests.insert(),
                    [
                        {
                            "batch_id": batch_id,
                            "seq": start + i,
                            "custom_id": custom_id,
                            "params": params,
                            "state": pending,
                            "updated_at": now,
                        }
                        for i, (custom_id, params) in enumerate(
                            requests[start : start + _INSERT_CHUNK]
                        )
                    ],
                )

        # Off the event loop on SQLite: 100,000 rows would hold every other request ~2 s.
        await self.db.write_bulk(op)
        return BatchRecord(
            id=batch_id,
            key_id=key_id,
            status=BatchStatus.IN_PROGRESS,
            created_at=now,
            expires_at=expires_at,
            ended_at=None,
            cancel_initiated_at=None,
            counts=RequestCounts(processing=len(requests)),
        )

    async def get(self, batch_id: str, key_id: str | None = None) -> BatchRecord | None:
        """The batch with its counts; with ``key_id``, only if that key owns it."""
        query = sa.select(batches).where(_visible(batch_id, key_id))

        def op(conn: sa.Connection) -> BatchRecord | None:
            row = conn.execute(query).first()
            return _records(conn, [row])[0] if row else None

        return await self.db.read(op)

    async def page(
        self, key_id: str, *, before_id: str | None, after_id: str | None, limit: int
    ) -> tuple[list[BatchRecord], bool]:
        """One page of a key's batches, newest first, and whether more lie beyond it:
        ``after_id`` pages towards older batches, ``before_id`` towards newer ones."""
        cursor_id = after_id or before_id
        base = sa.select(batches).where(batches.c.key_id == key_id, batches.c.deleted_at.is_(None))

        def op(conn: sa.Connection) -> tuple[list[BatchRecord], bool]:
            query = base
            newer = before_id is not None
            if cursor_id is not None:
                cursor = conn.execute(
                    sa.select(batches.c.created_at).where(_visible(cursor_id, key_id))
                ).first()
                if cursor is None:
                    return [], False
                at = cursor.created_at
                if newer:
                    query = query.where(
                        sa.or_(
                            batches.c.created_at > at,
                            sa.and_(batches.c.created_at == at, batches.c.id > cursor_id),
                        )
                    )
                else:
                    query = query.where(
                        sa.or_(
                            batches.c.created_at < at,
                            sa.and_(batches.c.created_at == at, batches.c.id < cursor_id),
                        )
                    )
            order = (
                (batches.c.created_at.asc(), batches.c.id.asc())
                if newer
                else (batches.c.created_at.desc(), batches.c.id.desc())
            )
            rows = list(conn.execute(query.order_by(*order).limit(limit + 1)))
            more = len(rows) > limit
            rows = rows[:limit]
            if newer:
                rows.reverse()
            return _records(conn, rows), more

        return await self.db.read(op)

    async def open_batches(self) -> list[BatchRecord]:
        """Every batch still in progress or canceling, oldest first (counts left empty)."""
        query = (
            sa.select(batches)
            .where(batches.c.status.in_(_OPEN), batches.c.deleted_at.is_(None))
            .order_by(batches.c.created_at, batches.c.id)
        )

        def op(conn: sa.Connection) -> list[BatchRecord]:
            return [
                BatchRecord(
                    id=r.id,
                    key_id=r.key_id,
                    status=BatchStatus(r.status),
                    created_at=r.created_at,
                    expires_at=r.expires_at,
                    ended_at=r.ended_at,
                    cancel_initiated_at=r.cancel_initiated_at,
                    counts=RequestCounts(),
                )
                for r in conn.execute(query)
            ]

        return await self.db.read(op)

    async def take_pending(
        self, batch_id: str, *, in_flight: int, now: datetime
    ) -> list[FedRequest]:
        """Move the next pending requests to ``queued`` so that at most ``in_flight`` of the
        batch are queued at once, and return them; nothing unless the batch is in progress.

        On PostgreSQL the batch row is locked first, so two nodes feeding the same batch
        take turns and together never exceed the bound.
        """
        postgres = self.db.dialect == "postgresql"
        lock = sa.select(batches.c.status).where(batches.c.id == batch_id)
        if postgres:
            lock = lock.with_for_update()
        queued = (
            sa.select(sa.func.count())
            .select_from(batch_requests)
            .where(
                batch_requests.c.batch_id == batch_id,
                batch_requests.c.state == RequestState.QUEUED.value,
            )
        )

        def op(conn: sa.Connection) -> list[FedRequest]:
            status = conn.execute(lock).scalar()
            if status != BatchStatus.IN_PROGRESS.value:
                return []
            free = in_flight - int(conn.execute(queued).scalar() or 0)
            if free <= 0:
                return []
            rows = conn.execute(
                sa.select(batch_requests.c.seq, batch_requests.c.custom_id, batch_requests.c.params)
                .where(
                    batch_requests.c.batch_id == batch_id,
                    batch_requests.c.state == RequestState.PENDING.value,
                    sa.or_(
                        batch_requests.c.not_before.is_(None), batch_requests.c.not_before <= now
                    ),
                )
                .order_by(batch_requests.c.seq)
                .limit(free)
            ).all()
            taken: list[FedRequest] = []
            for seq, custom_id, params in rows:
                moved = conn.execute(
                    batch_requests.update()
                    .where(
                        _request(batch_id, seq),
                        batch_requests.c.state == RequestState.PENDING.value,
                    )
                    .values(state=RequestState.QUEUED.value, updated_at=now, not_before=None)
                ).rowcount
                if moved:
                    taken.append(FedRequest(batch_id, seq, custom_id, params))
            return taken

        return await self.db.write(op)

    async def attach_job(self, batch_id: str, seq: int, job_id: str, now: datetime) -> bool:
        """Note the job a taken request became; False if the request was ended meanwhile
        (a cancel or expiry), when the caller must cancel that job."""
        query = (
            batch_requests.update()
            .where(
                _request(batch_id, seq),
                batch_requests.c.state == RequestState.QUEUED.value,
                sa.or_(batch_requests.c.job_id.is_(None), batch_requests.c.job_id == job_id),
            )
            .values(job_id=job_id, updated_at=now)
        )
        return await self.db.write(lambda conn: conn.execute(query).rowcount > 0)

    async def put_back(
        self, batch_id: str, seq: int, now: datetime, not_before: datetime | None = None
    ) -> bool:
        """Return a taken request that got no job to ``pending`` (fed again after
        ``not_before``)."""
        query = (
            batch_requests.update()
            .where(_unfed(batch_id, seq))
            .values(state=RequestState.PENDING.value, not_before=not_before, updated_at=now)
        )
        return await self.db.write(lambda conn: conn.execute(query).rowcount > 0)

    async def end_unfed(
        self,
        batch_id: str,
        seq: int,
        state: RequestState,
        result: dict[str, Any] | None,
        now: datetime,
    ) -> bool:
        """End a taken request that got no job (refused by a spent budget)."""
        query = (
            batch_requests.update()
            .where(_unfed(batch_id, seq))
            .values(state=state.value, result=result, updated_at=now)
        )
        return await self.db.write(lambda conn: conn.execute(query).rowcount > 0)

    async def record(
        self,
        batch_id: str,
        seq: int,
        *,
        job_id: str,
        state: RequestState,
        result: dict[str, Any] | None,
        now: datetime,
    ) -> bool:
        """Record the outcome of a request's job; only the first recording applies. A
        request whose job was never noted (its feeder stopped in between) takes it now."""
        query = (
            batch_requests.update()
            .where(
                _request(batch_id, seq),
                batch_requests.c.state == RequestState.QUEUED.value,
                sa.or_(batch_requests.c.job_id == job_id, batch_requests.c.job_id.is_(None)),
            )
            .values(state=state.value, result=result, job_id=job_id, updated_at=now)
        )
        return await self.db.write(lambda conn: conn.execute(query).rowcount > 0)

    async def by_job(self, job_id: str) -> tuple[str, int] | None:
        """The (batch id, seq) of the queued request ``job_id`` runs, if any."""
        query = sa.select(batch_requests.c.batch_id, batch_requests.c.seq).where(
            batch_requests.c.job_id == job_id,
            batch_requests.c.state == RequestState.QUEUED.value,
        )

        def op(conn: sa.Connection) -> tuple[str, int] | None:
            row = conn.execute(query).first()
            return (row[0], row[1]) if row else None

        return await self.db.read(op)

    async def unrecorded(self, *, stale_before: datetime, limit: int = 500) -> list[Unrecorded]:
        """Queued requests to look at again: their job ended or vanished unrecorded (a
        restart, another node), or they have no job yet (being fed, or their feeder died
        between submitting and noting the job; ``stale`` when taken before the cutoff)."""
        terminal = [s.value for s in JobStatus if s.terminal]
        query = (
            sa.select(
                batch_requests.c.batch_id,
                batches.c.key_id,
                batch_requests.c.seq,
                batch_requests.c.job_id,
                jobs.c.id.is_not(None),
                batch_requests.c.updated_at < stale_before,
            )
            .select_from(
                batch_requests.join(batches, batches.c.id == batch_requests.c.batch_id).outerjoin(
                    jobs, jobs.c.id == batch_requests.c.job_id
                )
            )
            .where(
                batch_requests.c.state == RequestState.QUEUED.value,
                sa.or_(
                    batch_requests.c.job_id.is_(None),
                    jobs.c.id.is_(None),
                    jobs.c.status.in_(terminal),
                ),
            )
            .limit(limit)
        )

        def op(conn: sa.Connection) -> list[Unrecorded]:
            return [
                Unrecorded(r[0], r[1], r[2], r[3], bool(r[4]), bool(r[5]))
                for r in conn.execute(query)
            ]

        return await self.db.read(op)

    async def forget_job(self, batch_id: str, seq: int, job_id: str, now: datetime) -> bool:
        """Return a queued request whose job row is gone to ``pending``, to be fed again."""
        query = (
            batch_requests.update()
            .where(
                _request(batch_id, seq),
                batch_requests.c.state == RequestState.QUEUED.value,
                batch_requests.c.job_id == job_id,
            )
            .values(state=RequestState.PENDING.value, job_id=None, updated_at=now)
        )
        return await self.db.write(lambda conn: conn.execute(query).rowcount > 0)

    async def cancel(self, batch_id: str, key_id: str, now: datetime) -> list[str] | None:
        """Start canceling an in-progress batch: its pending (and job-less queued) requests
        end ``canceled`` at once; returns the jobs still in flight to cancel, or None when
        the batch is not the key's or not in progress."""
        start = (
            batches.update()
            .where(_visible(batch_id, key_id), batches.c.status == BatchStatus.IN_PROGRESS.value)
            .values(status=BatchStatus.CANCELING.value, cancel_initiated_at=now)
        )
        return await self.db.write(
            lambda conn: _stop(conn, start, batch_id, RequestState.CANCELED, now)
        )

    async def expire(self, batch_id: str, now: datetime) -> list[str] | None:
        """End an open batch as expired: every unfinished request ends ``expired``; returns
        the jobs still in flight to cancel, or None if the batch had ended already."""
        start = (
            batches.update()
            .where(batches.c.id == batch_id, batches.c.status.in_(_OPEN))
            .values(status=BatchStatus.ENDED.value, ended_at=now)
        )
        return await self.db.write(
            lambda conn: _stop(conn, start, batch_id, RequestState.EXPIRED, now, in_flight=True)
        )

    async def end_if_done(self, batch_id: str, now: datetime) -> bool:
        """End an open batch none of whose requests is pending or queued any more."""
        busy = sa.exists().where(
            batch_requests.c.batch_id == batch_id, batch_requests.c.state.in_(_UNFINISHED)
        )
        query = (
            batches.update()
            .where(batches.c.id == batch_id, batches.c.status.in_(_OPEN), sa.not_(busy))
            .values(status=BatchStatus.ENDED.value, ended_at=now)
        )
        return await self.db.write(lambda conn: conn.execute(query).rowcount > 0)

    async def results_after(self, batch_id: str, after_seq: int, limit: int) -> list[ResultRow]:
        """The next ``limit`` ended requests of a batch after ``after_seq``, in order."""
        query = (
            sa.select(
                batch_requests.c.seq,
                batch_requests.c.custom_id,
                batch_requests.c.state,
                batch_requests.c.result,
            )
            .where(
                batch_requests.c.batch_id == batch_id,
                batch_requests.c.seq > after_seq,
                batch_requests.c.state.in_([s.value for s in FINAL_STATES]),
            )
            .order_by(batch_requests.c.seq)
            .limit(limit)
        )
        return await self.db.read(
            lambda conn: [
                ResultRow(r[0], r[1], RequestState(r[2]), r[3]) for r in conn.execute(query)
            ]
        )

    async def mark_deleted(self, batch_id: str, key_id: str, now: datetime) -> bool:
        """Hide an ended batch of the key from now on (``purge`` removes its rows)."""
        query = (
            batches.update()
            .where(_visible(batch_id, key_id), batches.c.status == BatchStatus.ENDED.value)
            .values(deleted_at=now)
        )
        return await self.db.write(lambda conn: conn.execute(query).rowcount > 0)

    async def purge(self, batch_id: str) -> None:
        """Remove a batch, its requests and their ended jobs, a chunk per transaction."""

        def chunk(conn: sa.Connection) -> int:
            seqs = conn.execute(
                sa.select(batch_requests.c.seq, batch_requests.c.job_id)
                .where(batch_requests.c.batch_id == batch_id)
                .order_by(batch_requests.c.seq)
                .limit(_PURGE_CHUNK)
            ).all()
            if not seqs:
                return 0
            job_ids = [j for _, j in seqs if j is not None]
            if job_ids:
                ended = conn.execute(
                    sa.select(jobs.c.id).where(
                        jobs.c.id.in_(job_ids),
                        jobs.c.status.in_([s.value for s in JobStatus if s.terminal]),
                    )
                )
                _delete_jobs(conn, [r[0] for r in ended])
            conn.execute(
                batch_requests.delete().where(
                    batch_requests.c.batch_id == batch_id,
                    batch_requests.c.seq <= seqs[-1][0],
                )
            )
            return len(seqs)

        while await self.db.write(chunk) == _PURGE_CHUNK:
            pass
        await self.db.write(
            lambda conn: conn.execute(batches.delete().where(batches.c.id == batch_id))
        )

    async def to_purge(self, created_before: datetime, limit: int = 100) -> list[str]:
        """Batches to remove: deleted ones, and ended ones created before the cutoff."""
        query = (
            sa.select(batches.c.id)
            .where(
                sa.or_(
                    batches.c.deleted_at.is_not(None),
                    sa.and_(
                        batches.c.status == BatchStatus.ENDED.value,
                        batches.c.created_at < created_before,
                    ),
                )
            )
            .limit(limit)
        )
        return await self.db.read(lambda conn: [r[0] for r in conn.execute(query)])


def _stop(
    conn: sa.Connection,
    start: sa.Update,
    batch_id: str,
    to: RequestState,
    now: datetime,
    *,
    in_flight: bool = False,
) -> list[str] | None:
    """Apply the batch's guarded status change, end its unfinished requests as ``to`` and
    return the jobs of requests still in flight (ended too when ``in_flight``)."""
    if conn.execute(start).rowcount == 0:
        return None
    queued = sa.and_(
        batch_requests.c.batch_id == batch_id,
        batch_requests.c.state == RequestState.QUEUED.value,
    )
    job_ids = [
        r[0]
        for r in conn.execute(
            sa.select(batch_requests.c.job_id).where(queued, batch_requests.c.job_id.is_not(None))
        )
    ]
    ending = (
        batch_requests.c.state.in_(_UNFINISHED)
        if in_flight
        else sa.or_(
            batch_requests.c.state == RequestState.PENDING.value,
            sa.and_(
                batch_requests.c.state == RequestState.QUEUED.value,
                batch_requests.c.job_id.is_(None),
            ),
        )
    )
    conn.execute(
        batch_requests.update()
        .where(batch_requests.c.batch_id == batch_id, ending)
        .values(state=to.value, updated_at=now)
    )
    return job_ids
