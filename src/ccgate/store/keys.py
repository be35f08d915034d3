"""SQL for API keys: only hashes are stored, never secrets."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ccgate.policy import FIELD_NAMES, KeyPolicy, policy_from_row, policy_to_row
from ccgate.store.engine import Database
from ccgate.store.errors import AlreadyExists
from ccgate.store.schema import api_keys


@dataclass(frozen=True)
class KeyRecord:
    """One app's key as stored: its name, visible prefix, lifecycle timestamps and policy."""

    id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    policy: KeyPolicy = field(default_factory=KeyPolicy)
    kind: str = "app"

    @property
    def active(self) -> bool:
        """True until the key is revoked."""
        return self.revoked_at is None

    def expired(self, now: datetime) -> bool:
        """True once the key's ``expires_at`` has passed."""
        return self.policy.expires_at is not None and now >= self.policy.expires_at


def _record(row: Any) -> KeyRecord:
    m = row._mapping
    policy = policy_from_row(m)
    return KeyRecord(
        id=m["id"],
        name=m["name"],
        prefix=m["prefix"],
        created_at=m["created_at"],
        last_used_at=m["last_used_at"],
        revoked_at=m["revoked_at"],
        policy=policy,
        kind=m["kind"],
    )


_COLUMNS = (
    api_keys.c.id,
    api_keys.c.name,
    api_keys.c.prefix,
    api_keys.c.created_at,
    api_keys.c.last_used_at,
    api_keys.c.revoked_at,
    api_keys.c.kind,
    *(api_keys.c[name] for name in FIELD_NAMES),
)


# Built once: every authenticated request runs it.
_BY_HASH = sa.select(*_COLUMNS).where(api_keys.c.secret_hash == sa.bindparam("secret_hash"))


class KeyTable:
    """Inserts, finds and revokes keys."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(
        self,
        *,
        key_id: str,
        name: str,
        prefix: str,
        secret_hash: str,
        now: datetime,
        webhook_secret: str | None = None,
        policy: KeyPolicy | None = None,
        kind: str = "app",
    ) -> KeyRecord:
        """Store a new key; raise AlreadyExists if the name is taken."""
        policy = policy or KeyPolicy()
        query = api_keys.insert().values(
            id=key_id,
            name=name,
            prefix=prefix,
            secret_hash=secret_hash,
            created_at=now,
            webhook_secret=webhook_secret,
            kind=kind,
            **policy_to_row(policy),
        )
        try:
            await self.db.write(lambda conn: conn.execute(query))
        except IntegrityError:
            raise AlreadyExists(name) from None
        return KeyRecord(key_id, name, prefix, now, None, None, policy, kind)

    async def update_policy(self, name: str, policy: KeyPolicy) -> bool:
        """Replace an active key's policy; False when no active key has that name."""
        query = (
            api_keys.update()
            .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
            .values(**policy_to_row(policy))
        )
        return await self.db.write(lambda conn: conn.execute(query).rowcount > 0)

    async def by_id(self, key_id: str) -> KeyRecord | None:
        """Find a key by its id."""
        return await self._one(api_keys.c.id == key_id)

    async def _one(self, where: sa.ColumnElement[bool]) -> KeyRecord | None:
        query = sa.select(*_COLUMNS).where(where)

        def op(conn: sa.Connection) -> KeyRecord | None:
            row = conn.execute(query).first()
            return _record(row) if row else None

        return await self.db.read(op)

    async def by_hash(self, secret_hash: str) -> KeyRecord | None:
        """Find the key whose secret hashes to ``secret_hash``, revoked or not."""

        def op(conn: sa.Connection) -> KeyRecord | None:
            row = conn.execute(_BY_HASH, {"secret_hash": secret_hash}).first()
            return _record(row) if row else None

        return await self.db.read(op)

    async def by_name(self, name: str) -> KeyRecord | None:
        """Find a key by its name."""
        return await self._one(api_keys.c.name == name)

    async def list(self) -> list[KeyRecord]:
        """Every key, oldest first."""
        query = sa.select(*_COLUMNS).order_by(api_keys.c.created_at)
        return await self.db.read(lambda conn: [_record(r) for r in conn.execute(query)])

    async def revoke(self, name: str, now: datetime) -> bool:
        """Mark a key revoked; False when no active key has that name."""
        query = (
            api_keys.update()
            .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return await self.db.write(lambda conn: conn.execute(query).rowcount > 0)

    async def set_webhook_secret(
        self, name: str, secret: str, *, previous_until: datetime | None = None
    ) -> bool:
        """Replace an active key's webhook secret; False when no active key has that name.

        With ``previous_until``, the replaced secret is kept to sign next to the new one
        until then (a rotation's grace); without it, the replaced secret stops at once.
        """
        keep = previous_until is not None
        query = (
            api_keys.update()
            .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
            .values(
                webhook_secret=secret,
                previous_webhook_secret=api_keys.c.webhook_secret if keep else None,
                previous_webhook_secret_until=previous_until,
            )
        )
        return await self.db.write(lambda conn: conn.execute(query).rowcount > 0)

    async def touch(self, key_id: str, now: datetime) -> None:
        """Record that a key was just used."""
        query = api_keys.update().where(api_keys.c.id == key_id).values(last_used_at=now)
        await self.db.write(lambda conn: conn.execute(query))
