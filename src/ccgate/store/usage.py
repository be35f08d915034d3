"""SQL for usage: requests, tokens, cost and errors per key, summed from the audit log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from ccgate.store.engine import Database
from ccgate.store.schema import audit_log

GroupBy = Literal["day", "model"]


@dataclass(frozen=True)
class UsageRow:
    """One key's totals, for one day or model when grouped (``group`` is None otherwise)."""

    key_name: str
    group: str | None
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    errors: int

    def as_json(self, group_by: GroupBy | None) -> dict[str, Any]:
        """The row as JSON: ``key``, then ``day`` or ``model`` when grouped, then the sums."""
        out: dict[str, Any] = {"key": self.key_name}
        if group_by is not None:
            out[group_by] = self.group
        out.update(
            requests=self.requests,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cost_usd=round(self.cost_usd, 6),
            errors=self.errors,
        )
        return out


def _day(dialect: str) -> sa.ColumnElement[str]:
    # Days are UTC days: SQLite keeps naive UTC text, PostgreSQL a timestamptz.
    if dialect == "sqlite":
        return sa.func.date(audit_log.c.at, type_=sa.String())
    utc = sa.func.timezone("UTC", audit_log.c.at)
    return sa.func.to_char(utc, "YYYY-MM-DD", type_=sa.String())


class UsageTable:
    """Aggregates audit rows into usage per key."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def totals(
        self,
        *,
        key_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        group_by: GroupBy | None = None,
    ) -> list[UsageRow]:
        """Sums over audit rows with ``since <= at < until``, per key (and day or model).

        Rows without a key (requests refused before authentication) are left out.
        """
        zero = sa.literal(0)
        columns: list[Any] = [
            audit_log.c.key_name,
            sa.func.count().label("requests"),
            sa.func.coalesce(sa.func.sum(audit_log.c.input_tokens), zero).label("input_tokens"),
            sa.func.coalesce(sa.func.sum(audit_log.c.output_tokens), zero).label("output_tokens"),
            sa.func.coalesce(sa.func.sum(audit_log.c.cost_usd), 0.0).label("cost_usd"),
            sa.func.sum(sa.case((audit_log.c.http_status >= 400, 1), else_=0)).label("errors"),
        ]
        keys: list[Any] = [audit_log.c.key_name]
        if group_by is not None:
            group = _day(self.db.dialect) if group_by == "day" else audit_log.c.model
            columns.append(group.label("grp"))
            keys.append(group)
        query = sa.select(*columns).where(audit_log.c.key_name.is_not(None))
        if key_name is not None:
            query = query.where(audit_log.c.key_name == key_name)
        if since is not None:
            query = query.where(audit_log.c.at >= since)
        if until is not None:
            query = query.where(audit_log.c.at < until)
        query = query.group_by(*keys).order_by(*keys)

        def op(conn: sa.Connection) -> list[UsageRow]:
            rows = []
            for row in conn.execute(query):
                m = row._mapping
                rows.append(
                    UsageRow(
                        key_name=m["key_name"],
                        group=m["grp"] if group_by else None,
                        requests=int(m["requests"]),
                        input_tokens=int(m["input_tokens"]),
                        output_tokens=int(m["output_tokens"]),
                        cost_usd=float(m["cost_usd"]),
                        errors=int(m["errors"] or 0),
                    )
                )
            return rows

        return await self.db.read(op)
