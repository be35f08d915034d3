"""SQL for audit rows: who called which door, with what outcome; text only when enabled."""

from __future__ import annotations

import operator
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ccgate.store import sqlite_fast as fast
from ccgate.store.engine import Database
from ccgate.store.schema import audit_log
from ccgate.store.sqlite_fast import is_sqlite


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
# Every field at once, in that order (a shallow copy: every field here is a plain value).
_ENTRY_VALUES = operator.attrgetter(*_ENTRY_FIELDS)
# Where the text fields are among them, with their column's length.
_TEXT_FIELDS = tuple(
    (i, _TEXT_COLUMNS[name]) for i, name in enumerate(_ENTRY_FIELDS) if name in _TEXT_COLUMNS
)


def _fitted_values(entry: AuditEntry) -> list[Any]:
    """``entry``'s values in ``_ENTRY_FIELDS`` order, as ``fit_audit_row`` fits them."""
    values = list(_ENTRY_VALUES(entry))
    for i, length in _TEXT_FIELDS:
        value = values[i]
        if isinstance(value, str):
            if (
                type(value) is str
                and value.isascii()
                and "\x00" not in value
                and (length is None or len(value) <= length)
            ):
                continue  # already fits: kept as it is
            if not value.isascii():
                value = value.encode("utf-8", "replace").decode("utf-8")
            value = value.replace("\x00", "\ufffd")
            values[i] = value[:length] if length is not None else value
    return values


def fit_audit_row(entry: AuditEntry) -> dict[str, Any]:
    """``entry`` as a row every backend stores: text cut to its column's length, NUL and
    lone surrogates (which PostgreSQL refuses) replaced."""
    return dict(zip(_ENTRY_FIELDS, _fitted_values(entry), strict=True))


def _row_at_fault(exc: Exception) -> bool:
    """True when ``exc`` says the database refused a row's values, not that it is away."""
    if isinstance(exc, sa.exc.DBAPIError):
        return not exc.connection_invalidated and not isinstance(
            exc, sa.exc.OperationalError | sa.exc.InterfaceError
        )
    return isinstance(exc, ValueError | TypeError | ArithmeticError)


def _insert(conn: sa.Connection, rows: list[list[Any]]) -> None:
    """Add fitted rows (values in ``_ENTRY_FIELDS`` order) inside the caller's transaction.
    On SQLite, every flush's statement runs straight on the driver (store/sqlite_fast.py),
    values stored as SQLAlchemy's insert stores them; PostgreSQL keeps the Core statement."""
    if is_sqlite(conn):
        fast.insert_many(conn, audit_log, _ENTRY_FIELDS, rows)
    else:
        conn.execute(audit_log.insert(), [dict(zip(_ENTRY_FIELDS, r, strict=True)) for r in rows])


class AuditTable:
    """Appends and reads audit rows."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def append_many(self, entries: list[AuditEntry]) -> list[str]:
        """Add rows in one transaction; if the database refuses the batch for its values,
        add them one by one so a bad row loses nothing else. Returns the request ids of the
        rows that could not be written; raises when the database itself fails."""
        rows = [_fitted_values(e) for e in entries]
        if not rows:
            return []
        try:
            await self.db.write(lambda conn: _insert(conn, rows))
        except Exception as exc:
            if not _row_at_fault(exc):
                raise
        else:
            return []
        refused: list[str] = []
        for entry, row in zip(entries, rows, strict=True):

            def insert_one(conn: sa.Connection, row: list[Any] = row) -> None:
                _insert(conn, [row])

            try:
                await self.db.write(insert_one)
            except Exception as exc:
                if not _row_at_fault(exc):
                    raise
                refused.append(entry.request_id)
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
