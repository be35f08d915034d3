"""SQL for uploaded files: bytes kept until they expire, visible only to the key that sent them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ccgate.store.engine import Database
from ccgate.store.schema import files


@dataclass(frozen=True)
class FileRecord:
    """One uploaded file's facts, without its bytes."""

    id: str
    key_id: str | None
    filename: str | None
    media_type: str
    size: int
    created_at: datetime
    expires_at: datetime


_META = (
    files.c.id,
    files.c.key_id,
    files.c.filename,
    files.c.media_type,
    files.c.size,
    files.c.created_at,
    files.c.expires_at,
)


def _record(row: Any) -> FileRecord:
    m = row._mapping
    return FileRecord(**{c.name: m[c.name] for c in _META})


def _owned(file_ids: Sequence[str], key_id: str, now: datetime) -> sa.ColumnElement[bool]:
    # An expired file is gone for its owner even before the cleanup loop deletes it.
    return sa.and_(
        files.c.id.in_(list(file_ids)), files.c.key_id == key_id, files.c.expires_at > now
    )


class FileTable:
    """Stores, finds and expires uploaded files."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(
        self,
        *,
        file_id: str,
        key_id: str,
        filename: str | None,
        media_type: str,
        content: bytes,
        now: datetime,
        expires_at: datetime,
    ) -> FileRecord:
        """Store a file's bytes and return its record."""
        record = FileRecord(
            id=file_id,
            key_id=key_id,
            filename=filename,
            media_type=media_type,
            size=len(content),
            created_at=now,
            expires_at=expires_at,
        )
        query = files.insert().values(**record.__dict__, content=content)
        await self.db.write(lambda conn: conn.execute(query))
        return record

    async def get(self, file_id: str, *, key_id: str, now: datetime) -> FileRecord | None:
        """The file's record if ``key_id`` owns it and it has not expired."""
        query = sa.select(*_META).where(_owned([file_id], key_id, now))

        def op(conn: sa.Connection) -> FileRecord | None:
            row = conn.execute(query).first()
            return _record(row) if row else None

        return await self.db.read(op)

    async def records(
        self, file_ids: Sequence[str], *, key_id: str, now: datetime
    ) -> dict[str, FileRecord]:
        """The record (size included, bytes not) of each of ``file_ids`` that ``key_id`` owns
        and is unexpired: enough to refuse an attachment list before loading any bytes."""
        if not file_ids:
            return {}
        query = sa.select(*_META).where(_owned(file_ids, key_id, now))

        def op(conn: sa.Connection) -> dict[str, FileRecord]:
            return {row.id: _record(row) for row in conn.execute(query)}

        return await self.db.read(op)

    async def contents(
        self, file_ids: Sequence[str], *, key_id: str, now: datetime
    ) -> dict[str, tuple[FileRecord, bytes]]:
        """Record and bytes of each of ``file_ids`` that ``key_id`` owns and is unexpired,
        read without holding the event loop."""
        if not file_ids:
            return {}
        query = sa.select(*_META, files.c.content).where(_owned(file_ids, key_id, now))

        def op(conn: sa.Connection) -> dict[str, tuple[FileRecord, bytes]]:
            return {row.id: (_record(row), bytes(row.content)) for row in conn.execute(query)}

        return await self.db.read_bulk(op)

    async def delete(self, file_id: str, *, key_id: str) -> bool:
        """Delete one of ``key_id``'s files; False when it had none by that id."""
        query = files.delete().where(files.c.id == file_id, files.c.key_id == key_id)
        return await self.db.write(lambda conn: conn.execute(query).rowcount > 0)

    async def delete_expired(self, now: datetime, batch: int = 200) -> int:
        """Delete files that expired by ``now``, in batches; return how many went."""
        expired = sa.select(files.c.id).where(files.c.expires_at <= now).limit(batch)
        total = 0
        while True:

            def op(conn: sa.Connection) -> int:
                ids = [r[0] for r in conn.execute(expired)]
                if not ids:
                    return 0
                return int(conn.execute(files.delete().where(files.c.id.in_(ids))).rowcount)

            deleted = await self.db.write(op)
            total += deleted
            if deleted < batch:
                return total
