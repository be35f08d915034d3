"""SQL for audit rows: who called which door, with what outcome; text only when enabled."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ccgate.store.engine import Database
from ccgate.store.schema import audit_log


@dataclass(frozen=True)
class AuditEntry:
    """One request as the audit log records it."""

    at: datetime
    request_id: str
    door: str
    route: str
    http_status: int
    duration_ms: int
    key_name: str | None = None
    client_ip: str | None = None
    job_id: str | None = None
    model: str | None = None
    job_status: str | None = None
    prompt_bytes: int | None = None
    response_bytes: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    error_type: str | None = None
    prompt_text: str | None = None


class AuditTable:
    """Appends and reads audit rows."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def append_many(self, entries: list[AuditEntry]) -> None:
        """Add rows in one transaction."""
        rows = [asdict(e) for e in entries]
        if rows:
            await self.db.write(lambda conn: conn.execute(audit_log.insert(), rows))

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest rows first."""
        query = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        return await self.db.read(lambda conn: [dict(r._mapping) for r in conn.execute(query)])
