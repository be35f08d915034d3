"""SQL for sessions: the conversation a native job may continue, scoped to one key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ccgate.store import sqlite_fast as fast
from ccgate.store.engine import Database, Operation
from ccgate.store.schema import sessions
from ccgate.store.sqlite_fast import is_sqlite


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


_UPSERT_SQLITE = (
    "INSERT INTO sessions (id, key_id, model, system_prompt, messages, turns, created_at,"
    " updated_at, expires_at) VALUES (:id, :key_id, :model, :system_prompt, :messages, :turns,"
    " :created_at, :updated_at, :expires_at) ON CONFLICT (id) DO UPDATE SET"
    " model = excluded.model, system_prompt = excluded.system_prompt,"
    " messages = excluded.messages, turns = excluded.turns, updated_at = excluded.updated_at,"
    " expires_at = excluded.expires_at WHERE sessions.turns <= excluded.turns"
)
_upsert = pg_insert(sessions)
_UPSERT_POSTGRES = _upsert.on_conflict_do_update(
    index_elements=[sessions.c.id],
    set_={
        name: _upsert.excluded[name]
        for name in ("model", "system_prompt", "messages", "turns", "updated_at", "expires_at")
    },
    where=sessions.c.turns <= _upsert.excluded.turns,
)


def save_session(
    *,
    session_id: str,
    key_id: str | None,
    model: str,
    system_prompt: str | None,
    messages: list[dict[str, Any]],
    now: datetime,
    expires_at: datetime,
) -> Operation[None]:
    """The operation that creates the session or replaces its conversation with a longer
    one, for ``SessionTable.save`` or another transaction (the one ending a job)."""
    row = {
        "id": session_id,
        "key_id": key_id,
        "model": model,
        "system_prompt": system_prompt,
        "messages": messages,
        "turns": sum(1 for m in messages if m.get("role") == "user"),
        "created_at": now,
        "updated_at": now,
        "expires_at": expires_at,
    }

    def op(conn: sa.Connection) -> None:
        # One upsert; only a conversation at least as long replaces the stored one, so a slow
        # twin that branched from an older turn never rolls a session back.
        if is_sqlite(conn):  # on every session job's end: straight to the driver
            fast.execute(conn, _UPSERT_SQLITE, fast.stored_values(conn, sessions, row))
        else:
            conn.execute(_UPSERT_POSTGRES, row)

    return op


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
        await self.db.write(
            save_session(
                session_id=session_id,
                key_id=key_id,
                model=model,
                system_prompt=system_prompt,
                messages=messages,
                now=now,
                expires_at=expires_at,
            )
        )

    async def delete(self, session_id: str, *, key_id: str | None) -> bool:
        """Delete one of ``key_id``'s sessions; False when it had none by that id."""
        query = sessions.delete().where(sessions.c.id == session_id, sessions.c.key_id == key_id)
        return await self.db.write(lambda conn: conn.execute(query).rowcount > 0)

    async def delete_expired(self, now: datetime) -> int:
        """Delete sessions whose time ran out; return how many."""
        query = sessions.delete().where(sessions.c.expires_at <= now)
        return await self.db.write(lambda conn: int(conn.execute(query).rowcount or 0))
