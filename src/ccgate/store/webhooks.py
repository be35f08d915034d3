"""SQL for the webhook outbox: one delivery row per finished job that asked for a callback."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ccgate.security.keys import new_id
from ccgate.store.engine import Database
from ccgate.store.schema import api_keys, jobs, webhook_deliveries

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"


def _of_revoked_key(delivery_job_id: Any) -> sa.ColumnElement[bool]:
    """The delivery's job belongs to a revoked key: nothing more goes out for it."""
    return sa.exists().where(jobs.c.id == delivery_job_id, api_keys.c.id == jobs.c.key_id,
                             api_keys.c.revoked_at.is_not(None))


def insert_delivery(conn: sa.Connection, *, job_id: str, url: str, now: datetime) -> str:
    """Queue a delivery for ``job_id`` inside the caller's transaction; return its event id.

    Called in the same transaction that ends the job, so a job never ends without its
    delivery being recorded, whatever crashes afterwards.
    """
    delivery_id = new_id("evt")
    conn.execute(webhook_deliveries.insert().values(
        id=delivery_id, job_id=job_id, url=url, status=PENDING, attempts=0,
        next_attempt_at=now, created_at=now, history=[]))
    return delivery_id


@dataclass(frozen=True)
class DeliveryRecord:
    """A webhook delivery as stored; its id is the event id receivers see on every attempt."""

    id: str
    job_id: str
    url: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    history: list[dict[str, Any]]


@dataclass(frozen=True)
class Attempt:
    """The outcome of one delivery attempt, as kept in the row's history."""

    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int

    def as_json(self) -> dict[str, Any]:
        """The history entry: ``at`` as ISO 8601 UTC."""
        return {"at": self.at.isoformat().replace("+00:00", "Z"),
                "status_code": self.status_code, "error": self.error,
                "duration_ms": self.duration_ms}


def _record(row: sa.Row[Any]) -> DeliveryRecord:
    m = dict(row._mapping)
    m["history"] = list(m["history"] or [])
    return DeliveryRecord(**m)


class DeliveryTable:
    """Every query ccgate makes about webhook deliveries."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim_due(self, owner: str, now: datetime, lease_until: datetime,
                        limit: int) -> list[DeliveryRecord]:
        """Lease up to ``limit`` pending deliveries that are due and not leased by a live node.

        The update re-checks every condition, so two nodes racing for a row never both get it.
        """
        t = webhook_deliveries
        claimable = sa.and_(
            t.c.status == PENDING, t.c.next_attempt_at <= now,
            sa.or_(t.c.lease_expires_at.is_(None), t.c.lease_expires_at < now),
            sa.not_(_of_revoked_key(t.c.job_id)))
        pick = sa.select(t.c.id).where(claimable).order_by(t.c.next_attempt_at, t.c.id)
        pick = pick.limit(limit)
        if self.db.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)

        def op(conn: sa.Connection) -> list[DeliveryRecord]:
            ids = list(conn.execute(pick).scalars())
            if not ids:
                return []
            rows = conn.execute(
                t.update().where(t.c.id.in_(ids), claimable)
                .values(lease_owner=owner, lease_expires_at=lease_until)
                .returning(*t.c)).all()
            return sorted((_record(r) for r in rows),
                          key=lambda d: (d.next_attempt_at or now, d.id))

        return await self.db.write(op)

    async def record(self, delivery_id: str, *, owner: str, attempt: Attempt, status: str,
                     next_attempt_at: datetime | None) -> DeliveryRecord | None:
        """Append ``attempt`` and move the delivery to ``status``, releasing ``owner``'s lease.

        Returns the updated delivery, or None when ``owner`` no longer holds the lease.
        """
        t = webhook_deliveries

        def op(conn: sa.Connection) -> DeliveryRecord | None:
            history = conn.execute(sa.select(t.c.history).where(
                t.c.id == delivery_id, t.c.lease_owner == owner)).scalar()
            if history is None:
                return None
            row = conn.execute(
                t.update().where(t.c.id == delivery_id, t.c.lease_owner == owner)
                .values(status=status, attempts=t.c.attempts + 1,
                        next_attempt_at=next_attempt_at,
                        delivered_at=attempt.at if status == DELIVERED else None,
                        last_status_code=attempt.status_code, last_error=attempt.error,
                        history=[*history, attempt.as_json()],
                        lease_owner=None, lease_expires_at=None)
                .returning(*t.c)).first()
            return _record(row) if row is not None else None

        return await self.db.write(op)

    async def release(self, delivery_id: str, owner: str) -> None:
        """Give up ``owner``'s lease without recording an attempt (e.g. on shutdown)."""
        t = webhook_deliveries
        query = (t.update().where(t.c.id == delivery_id, t.c.lease_owner == owner)
                 .values(lease_owner=None, lease_expires_at=None))
        await self.db.write(lambda conn: conn.execute(query))

    async def drop_pending(self, reason: str, key_ids: list[str] | None = None) -> int:
        """Give up the pending deliveries of these keys' jobs (None: of every revoked key's
        jobs) as failed with ``reason``, leases included: an attempt in flight cannot record
        its outcome any more. Returns how many were dropped."""
        if key_ids is not None and not key_ids:
            return 0
        t = webhook_deliveries
        owned = (sa.exists().where(jobs.c.id == t.c.job_id, jobs.c.key_id.in_(key_ids))
                 if key_ids is not None else _of_revoked_key(t.c.job_id))
        query = (t.update().where(t.c.status == PENDING, owned)
                 .values(status=FAILED, last_error=reason, next_attempt_at=None,
                         lease_owner=None, lease_expires_at=None))
        return await self.db.write(lambda conn: int(conn.execute(query).rowcount))

    async def get(self, delivery_id: str) -> DeliveryRecord | None:
        """One delivery by its id (the event id)."""
        query = sa.select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)
        return await self._one(query)

    async def for_job(self, job_id: str) -> DeliveryRecord | None:
        """The latest delivery of ``job_id``, if it has one."""
        t = webhook_deliveries
        query = (sa.select(t).where(t.c.job_id == job_id)
                 .order_by(t.c.created_at.desc(), t.c.id.desc()).limit(1))
        return await self._one(query)

    async def signing_secret(self, key_id: str) -> tuple[str | None, str | None]:
        """The webhook secret (None: it has none) and the kind of key ``key_id``."""
        query = (sa.select(api_keys.c.webhook_secret, api_keys.c.kind)
                 .where(api_keys.c.id == key_id))

        def op(conn: sa.Connection) -> tuple[str | None, str | None]:
            row = conn.execute(query).first()
            return (row.webhook_secret, row.kind) if row is not None else (None, None)

        return await self.db.read(op)

    async def _one(self, query: sa.Select[Any]) -> DeliveryRecord | None:
        def op(conn: sa.Connection) -> DeliveryRecord | None:
            row = conn.execute(query).first()
            return _record(row) if row is not None else None

        return await self.db.read(op)
