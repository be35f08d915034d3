"""SQL for audit rows: who called which door, with what outcome; text only when enabled."""

from __future__ import annotations

from dataclasses import dataclass, fields
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


@dataclass(frozen=True)
class AuditPosition:
    """Where a page of audit rows ended: the last row's time and id (rows are ordered by
    both, newest first, so the next page starts strictly after it)."""

    at: datetime
    id: int


# Each text column's length (None: unbounded), from the schema.
_TEXT_COLUMNS: dict[str, int | None] = {
    c.name: c.type.length for c in audit_log.columns if isinstance(c.type, sa.String)
}


_ENTRY_FIELDS = tuple(f.name for f in fields(AuditEntry))


def fit_audit_row(entry: AuditEntry) -> dict[str, Any]:
    """``entry`` as a row every backend stores: text cut to its column's length, NUL and
    lone surrogates (which PostgreSQL refuses) replaced."""
    # A shallow copy: asdict() deep-copies every value, and every field here is a plain value.
    row = {name: getattr(entry, name) for name in _ENTRY_FIELDS}
    for name, length in _TEXT_COLUMNS.items():
        value = row.get(name)
        if isinstance(value, str):
            if not value.isascii():
                value = value.encode("utf-8", "replace").decode("utf-8")
            value = value.replace("\x00", "\ufffd")
            row[name] = value[:length] if length is not None else value
    return row


def _row_at_fault(exc: Exception) -> bool:
    """True when ``exc`` says the database refused a row's values, not that it is away."""
    if isinstance(exc, sa.exc.DBAPIError):
        return not exc.connection_invalidated and not isinstance(
            exc, sa.exc.OperationalError | sa.exc.InterfaceError
        )
    return isinstance(exc, ValueError | TypeError | ArithmeticError)


class AuditTable:
    """Appends and reads audit rows."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def append_many(self, entries: list[AuditEntry]) -> list[str]:
        """Add rows in one transaction; if the database refuses the batch for its values,
        add them one by one so a bad row loses nothing else. Returns the request ids of the
        rows that could not be written; raises when the database itself fails."""
        rows = [fit_audit_row(e) for e in entries]
        if not rows:
            return []
        try:
            await self.db.write(lambda conn: conn.execute(audit_log.insert(), rows))
        except Exception as exc:
            if not _row_at_fault(exc):
                raise
        else:
            return []
        refused: list[str] = []
        for row in rows:

            def insert_one(conn: sa.Connection, row: dict[str, Any] = row) -> None:
                conn.execute(audit_log.insert(), row)

            try:
                await self.db.write(insert_one)
            except Exception as exc:
                if not _row_at_fault(exc):
                    raise
                refused.append(row["request_id"])
        return refused

    async def fill_job_outcomes(self, outcomes: list[dict[str, Any]]) -> list[str]:
        """Write finished jobs' outcomes into the rows of the requests that queued them
        (``POST /api/v1/jobs`` answers 202 before the run ends); return the job ids whose
        row was not found (not written yet)."""
        if not outcomes:
            return []
        query = (
            audit_log.update()
            .where(audit_log.c.job_id == sa.bindparam("b_job_id"), audit_log.c.job_status.is_(None))
            .values(
                job_status=sa.bindparam("b_job_status"),
                model=sa.bindparam("b_model"),
                input_tokens=sa.bindparam("b_input_tokens"),
                output_tokens=sa.bindparam("b_output_tokens"),
                cost_usd=sa.bindparam("b_cost_usd"),
                error_type=sa.bindparam("b_error_type"),
            )
        )
        params = [{f"b_{k}": v for k, v in outcome.items()} for outcome in outcomes]

        def op(conn: sa.Connection) -> list[str]:
            return [p["b_job_id"] for p in params if not conn.execute(query, p).rowcount]

        return await self.db.write(op)

    async def recent(
        self,
        limit: int = 100,
        *,
        key_name: str | None = None,
        http_status: int | None = None,
        job_status: str | None = None,
        door: str | None = None,
        before: AuditPosition | None = None,
    ) -> list[dict[str, Any]]:
        """The newest rows first (by ``at``, then ``id``), optionally only one key's, one
        HTTP status, job status or door, and only rows older than ``before``."""
        query = audit_page_query(
            limit,
            key_name=key_name,
            http_status=http_status,
            job_status=job_status,
            door=door,
            before=before,
        )
        return await self.db.read(lambda conn: [dict(r._mapping) for r in conn.execute(query)])


def audit_page_query(
    limit: int,
    *,
    key_name: str | None = None,
    http_status: int | None = None,
    job_status: str | None = None,
    door: str | None = None,
    before: AuditPosition | None = None,
) -> sa.Select[Any]:
    """The query behind ``AuditTable.recent``: keyset paging, newest first. Each filter has
    an index ending in ``(at, id)`` that yields its rows already in order from ``before``
    on, so a page costs the same on page one and page ten thousand."""
    query = sa.select(audit_log).order_by(audit_log.c.at.desc(), audit_log.c.id.desc()).limit(limit)
    if key_name is not None:
        query = query.where(audit_log.c.key_name == key_name)
    if http_status is not None:
        query = query.where(audit_log.c.http_status == http_status)
    if job_status is not None:
        query = query.where(audit_log.c.job_status == job_status)
    if door is not None:
        query = query.where(audit_log.c.door == door)
    if before is not None:
        query = query.where(
            sa.tuple_(audit_log.c.at, audit_log.c.id)
            < sa.tuple_(
                sa.bindparam("before_at", before.at, type_=audit_log.c.at.type),
                sa.bindparam("before_id", before.id, type_=sa.Integer()),
            )
        )
    return query
