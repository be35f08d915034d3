"""SQL for sessions: the conversation a native job may continue, scoped to one key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ccgate.store.engine import Database
from ccgate.store.schema import sessions


@dataclass(frozen=True)
class SessionRecord:
    """One conversation: its owner, model, system prompt and turns so far."""

    id: str
    key_id: str | None
    model: str
    system_prompt: str | None
    messages: list[dict[str, Any]]
    turns: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime


def _record(row: Any) -> SessionRecord:
    return SessionRecord(**dict(row._mapping))


class SessionTable:
    """Finds, saves and expires sessions."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(
        self, session_id: str, *, key_id: str | None, now: datetime
    ) -> SessionRecord | None:
        """The session if it exists, belongs to ``key_id`` and has not expired."""
        query = sa.select(sessions).where(sessions.c.id == session_id, sessions.c.expires_at > now)
        if key_id is None:
            query = query.where(sessions.c.key_id.is_(None))
        else:
            query = query.where(sessions.c.key_id == key_id)

        def op(conn: sa.Connection) -> SessionRecord | None:
            row = conn.execute(query).first()
            return _record(row) if row else None

        return await self.db.read(op)

    async def save(
        self,
        *,
        session_id: str,
        key_id: str | None,
        model: str,
        system_prompt: str | None,
        messages: list[dict[str, Any]],
        now: datetime,
        expires_at: datetime,
    ) -> None:
        """Create the session or replace its conversation with a longer one."""
        turns = sum(1 for m in messages if m.get("role") == "user")
        values = {
            "model": model,
            "system_prompt": system_prompt,
            "messages": messages,
            "turns": turns,
            "updated_at": now,
            "expires_at": expires_at,
        }

        def op(conn: sa.Connection) -> None:
            # Only a conversation at least as long replaces the stored one, so a slow twin
            # that branched from an older turn never rolls a session back.
            updated = conn.execute(
                sessions.update()
                .where(sessions.c.id == session_id, sessions.c.turns <= turns)
                .values(**values)
            )
            if updated.rowcount == 0:
                exists = conn.execute(
                    sa.select(sessions.c.id).where(sessions.c.id == session_id)
                ).first()
                if exists is None:
                    conn.execute(
                        sessions.insert().values(
                            id=session_id, key_id=key_id, created_at=now, **values
                        )
                    )

        await self.db.write(op)

    async def delete(self, session_id: str, *, key_id: str | None) -> bool:
        """Delete one of ``key_id``'s sessions; False when it had none by that id."""
        query = sessions.delete().where(sessions.c.id == session_id, sessions.c.key_id == key_id)
        return await self.db.write(lambda conn: conn.execute(query).rowcount > 0)

    async def delete_expired(self, now: datetime) -> int:
        """Delete sessions whose time ran out; return how many."""
        query = sessions.delete().where(sessions.c.expires_at <= now)
        return await self.db.write(lambda conn: int(conn.execute(query).rowcount or 0))
