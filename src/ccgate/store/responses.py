"""SQL for stored OpenAI Responses: the Response object and its conversation, per key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ccgate.store.engine import Database
from ccgate.store.schema import responses


@dataclass(frozen=True)
class StoredResponse:
    """One stored Response: its owner, the Response as rendered and the conversation through
    its answer (Anthropic Messages)."""

    id: str
    key_id: str | None
    response: dict[str, Any]
    messages: list[dict[str, Any]]
    created_at: datetime
    expires_at: datetime


def _live(response_id: str, key_id: str | None, now: datetime) -> sa.ColumnElement[bool]:
    owner = responses.c.key_id.is_(None) if key_id is None else responses.c.key_id == key_id
    return sa.and_(responses.c.id == response_id, owner, responses.c.expires_at > now)


class ResponseTable:
    """Saves, finds, deletes and expires stored Responses."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def save(self, record: StoredResponse) -> None:
        """Store a finished Response (its id is new: one insert)."""
        values = {
            "id": record.id,
            "key_id": record.key_id,
            "response": record.response,
            "messages": record.messages,
            "created_at": record.created_at,
            "expires_at": record.expires_at,
        }
        await self.db.write(lambda conn: conn.execute(responses.insert().values(**values)))

    async def get(
        self, response_id: str, *, key_id: str | None, now: datetime
    ) -> StoredResponse | None:
        """The Response if it exists, belongs to ``key_id`` and has not expired."""
        query = sa.select(responses).where(_live(response_id, key_id, now))

        def op(conn: sa.Connection) -> StoredResponse | None:
            row = conn.execute(query).first()
            return StoredResponse(**dict(row._mapping)) if row else None

        return await self.db.read(op)

    async def delete(self, response_id: str, *, key_id: str | None, now: datetime) -> bool:
        """Delete one of ``key_id``'s live Responses; False when it had none by that id."""
        query = responses.delete().where(_live(response_id, key_id, now))
        return await self.db.write(lambda conn: conn.execute(query).rowcount > 0)

    async def delete_expired(self, now: datetime, batch: int = 500) -> int:
        """Delete Responses that expired by ``now``, in batches; return how many went."""
        expired = sa.select(responses.c.id).where(responses.c.expires_at <= now).limit(batch)
        total = 0
        while True:

            def op(conn: sa.Connection) -> int:
                ids = [r[0] for r in conn.execute(expired)]
                if not ids:
                    return 0
                query = responses.delete().where(responses.c.id.in_(ids))
                return int(conn.execute(query).rowcount)

            deleted = await self.db.write(op)
            total += deleted
            if deleted < batch:
                return total
