"""SQL for the webhook outbox: one delivery row per finished job that asked for a callback."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from ccgate.ids import new_id
from ccgate.store.engine import Database
from ccgate.store.schema import api_keys, jobs, webhook_deliveries

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
# Attempts kept in a delivery's log (the newest); the count of all attempts is kept apart.
HISTORY_LIMIT = 20


def _of_revoked_key(delivery_job_id: Any) -> sa.ColumnElement[bool]:
    """The delivery's job belongs to a revoked key: nothing more goes out for it."""
    return sa.exists().where(
        jobs.c.id == delivery_job_id,
        api_keys.c.id == jobs.c.key_id,
        api_keys.c.revoked_at.is_not(None),
    )


def insert_delivery(conn: sa.Connection, *, job_id: str, url: str, now: datetime) -> str:
    """Queue a delivery for ``job_id`` inside the caller's transaction; return its event id.

    Called in the same transaction that ends the job, so a job never ends without its
    delivery being recorded, whatever crashes afterwards.
    """
    delivery_id = new_id("evt")
    conn.execute(
        webhook_deliveries.insert().values(
            id=delivery_id,
            job_id=job_id,
            url=url,
            status=PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            history=[],
        )
    )
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
    round_attempts: int = 0
    round_started_at: datetime | None = None
    redeliveries: int = 0


@dataclass(frozen=True)
class SigningSecrets:
    """What signs a key's webhooks: its secret and, during a rotation's grace, the old one."""

    kind: str | None
    current: str | None
    previous: str | None = None
    previous_until: datetime | None = None

    def active(self, now: datetime) -> list[str]:
        """The secrets that sign at ``now``: the current one, then the old one in its grace."""
        found = [self.current] if self.current else []
        if self.previous and self.previous_until is not None and now < self.previous_until:
            found.append(self.previous)
        return found


class Redelivery(StrEnum):
    """What came of asking for a webhook again: queued, or why not."""

    QUEUED = "queued"
    NO_WEBHOOK = "no_webhook"
    PENDING = "pending"
    EXHAUSTED = "exhausted"


@dataclass(frozen=True)
class Attempt:
    """The outcome of one delivery attempt, as kept in the row's history."""

    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int

    def as_json(self, next_attempt_at: datetime | None = None) -> dict[str, Any]:
        """The history entry: times as ISO 8601 UTC; ``next_attempt_at`` is the retry it
        scheduled (None: none)."""
        return {
            "at": _iso(self.at),
            "status_code": self.status_code,
            "error": self.error,
            "duration_ms": self.duration_ms,
            "next_attempt_at": _iso(next_attempt_at) if next_attempt_at else None,
        }


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _record(row: sa.Row[Any]) -> DeliveryRecord:
    m = dict(row._mapping)
    m["history"] = list(m["history"] or [])
    return DeliveryRecord(**m)


class DeliveryTable:
    """Every query ccgate makes about webhook deliveries."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim_due(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[DeliveryRecord]:
        """Lease up to ``limit`` pending deliveries that are due and not leased by a live node.

        The update re-checks every condition, so two nodes racing for a row never both get it.
        """
        t = webhook_deliveries
        claimable = sa.and_(
            t.c.status == PENDING,
            t.c.next_attempt_at <= now,
            sa.or_(t.c.lease_expires_at.is_(None), t.c.lease_expires_at < now),
            sa.not_(_of_revoked_key(t.c.job_id)),
        )
        pick = sa.select(t.c.id).where(claimable).order_by(t.c.next_attempt_at, t.c.id)
        pick = pick.limit(limit)
        if self.db.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)

        def op(conn: sa.Connection) -> list[DeliveryRecord]:
            ids = list(conn.execute(pick).scalars())
            if not ids:
                return []
            rows = conn.execute(
                t.update()
                .where(t.c.id.in_(ids), claimable)
                .values(lease_owner=owner, lease_expires_at=lease_until)
                .returning(*t.c)
            ).all()
            return sorted(
                (_record(r) for r in rows), key=lambda d: (d.next_attempt_at or now, d.id)
            )

        return await self.db.write(op)

    async def record(
        self,
        delivery_id: str,
        *,
        owner: str,
        attempt: Attempt,
        status: str,
        next_attempt_at: datetime | None,
    ) -> DeliveryRecord | None:
        """Append ``attempt`` and move the delivery to ``status``, releasing ``owner``'s lease.

        Returns the updated delivery, or None when ``owner`` no longer holds the lease.
        """
        t = webhook_deliveries

        def op(conn: sa.Connection) -> DeliveryRecord | None:
            history = conn.execute(
                sa.select(t.c.history).where(t.c.id == delivery_id, t.c.lease_owner == owner)
            ).scalar()
            if history is None:
                return None
            entry = attempt.as_json(next_attempt_at)
            row = conn.execute(
                t.update()
                .where(t.c.id == delivery_id, t.c.lease_owner == owner)
                .values(
                    status=status,
                    attempts=t.c.attempts + 1,
                    round_attempts=t.c.round_attempts + 1,
                    round_started_at=sa.func.coalesce(t.c.round_started_at, attempt.at),
                    next_attempt_at=next_attempt_at,
                    delivered_at=attempt.at if status == DELIVERED else t.c.delivered_at,
                    last_status_code=attempt.status_code,
                    last_error=attempt.error,
                    history=[*history, entry][-HISTORY_LIMIT:],
                    lease_owner=None,
                    lease_expires_at=None,
                )
                .returning(*t.c)
            ).first()
            return _record(row) if row is not None else None

        return await self.db.write(op)

    async def release(self, delivery_id: str, owner: str) -> None:
        """Give up ``owner``'s lease without recording an attempt (e.g. on shutdown)."""
        t = webhook_deliveries
        query = (
            t.update()
            .where(t.c.id == delivery_id, t.c.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None)
        )
        await self.db.write(lambda conn: conn.execute(query))

    async def drop_pending(self, reason: str, key_ids: list[str] | None = None) -> int:
        """Give up the pending deliveries of these keys' jobs (None: of every revoked key's
        jobs) as failed with ``reason``, leases included: an attempt in flight cannot record
        its outcome any more. Returns how many were dropped."""
        if key_ids is not None and not key_ids:
            return 0
        t = webhook_deliveries
        owned = (
            sa.exists().where(jobs.c.id == t.c.job_id, jobs.c.key_id.in_(key_ids))
            if key_ids is not None
            else _of_revoked_key(t.c.job_id)
        )
        query = (
            t.update()
            .where(t.c.status == PENDING, owned)
            .values(
                status=FAILED,
                last_error=reason,
                next_attempt_at=None,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        return await self.db.write(lambda conn: int(conn.execute(query).rowcount))

    async def get(self, delivery_id: str) -> DeliveryRecord | None:
        """One delivery by its id (the event id)."""
        query = sa.select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)
        return await self._one(query)

    async def for_job(self, job_id: str) -> DeliveryRecord | None:
        """The latest delivery of ``job_id``, if it has one."""
        t = webhook_deliveries
        query = (
            sa.select(t)
            .where(t.c.job_id == job_id)
            .order_by(t.c.created_at.desc(), t.c.id.desc())
            .limit(1)
        )
        return await self._one(query)

    async def redeliver(self, job_id: str, now: datetime, limit: int) -> Redelivery:
        """Queue ``job_id``'s webhook again (same event id, a new round of attempts), at most
        ``limit`` times and never while a delivery is pending.
        """
        t = webhook_deliveries
        latest = (
            sa.select(t.c.id)
            .where(t.c.job_id == job_id)
            .order_by(t.c.created_at.desc(), t.c.id.desc())
            .limit(1)
        )

        def op(conn: sa.Connection) -> Redelivery:
            delivery_id = conn.execute(latest).scalar()
            if delivery_id is None:
                return Redelivery.NO_WEBHOOK
            queued = conn.execute(
                t.update()
                .where(t.c.id == delivery_id, t.c.status != PENDING, t.c.redeliveries < limit)
                .values(
                    status=PENDING,
                    next_attempt_at=now,
                    round_attempts=0,
                    round_started_at=None,
                    redeliveries=t.c.redeliveries + 1,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            ).rowcount
            if queued:
                return Redelivery.QUEUED
            status = conn.execute(sa.select(t.c.status).where(t.c.id == delivery_id)).scalar()
            return Redelivery.PENDING if status == PENDING else Redelivery.EXHAUSTED

        return await self.db.write(op)

    async def signing_secrets(self, key_id: str) -> SigningSecrets:
        """The kind of key ``key_id`` and the secrets that may sign its webhooks."""
        k = api_keys.c
        query = sa.select(
            k.kind, k.webhook_secret, k.previous_webhook_secret, k.previous_webhook_secret_until
        ).where(k.id == key_id)

        def op(conn: sa.Connection) -> SigningSecrets:
            row = conn.execute(query).first()
            if row is None:
                return SigningSecrets(kind=None, current=None)
            return SigningSecrets(
                kind=row.kind,
                current=row.webhook_secret,
                previous=row.previous_webhook_secret,
                previous_until=row.previous_webhook_secret_until,
            )

        return await self.db.read(op)

    async def signing_secret(self, key_id: str) -> tuple[str | None, str | None]:
        """The webhook secret (None: it has none) and the kind of key ``key_id``."""
        query = sa.select(api_keys.c.webhook_secret, api_keys.c.kind).where(api_keys.c.id == key_id)

        def op(conn: sa.Connection) -> tuple[str | None, str | None]:
            row = conn.execute(query).first()
            return (row.webhook_secret, row.kind) if row is not None else (None, None)

        return await self.db.read(op)

    async def _one(self, query: sa.Select[Any]) -> DeliveryRecord | None:
        def op(conn: sa.Connection) -> DeliveryRecord | None:
            row = conn.execute(query).first()
            return _record(row) if row is not None else None

        return await self.db.read(op)
