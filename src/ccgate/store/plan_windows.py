"""SQL for plan windows: their last-seen state and how much of each window each key used."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ccgate.runners.plan_windows import PlanWindow
from ccgate.store.engine import Database
from ccgate.store.schema import plan_window_usage, plan_windows


@dataclass(frozen=True)
class WindowUsage:
    """How much of one window (a fraction of the plan's) one key's runs used."""

    name: str
    used: float
    resets_at: datetime | None


def _window(row: sa.Row[Any]) -> PlanWindow:
    m = row._mapping
    return PlanWindow(
        name=m["name"],
        status=m["status"],
        utilization=m["utilization"],
        resets_at=m["resets_at"],
        seen_at=m["seen_at"],
    )


class PlanWindowTable:
    """Every query ccgate makes about plan windows."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, windows: Sequence[PlanWindow], key_id: str | None = None) -> None:
        """Store what a run saw of each window; a report older than the stored one is
        ignored. With ``key_id``, the rise in a window's utilization since the last report
        counts against that key's share of the window."""
        if not windows:
            return

        def op(conn: sa.Connection) -> None:
            for window in windows:
                _record_one(conn, window, key_id)

        await self.db.write(op)

    async def all(self) -> list[PlanWindow]:
        """Every window as last seen, by name."""
        query = sa.select(plan_windows).order_by(plan_windows.c.name)
        return await self.db.read(lambda conn: [_window(r) for r in conn.execute(query)])

    async def usage_of(self, key_id: str) -> list[WindowUsage]:
        """What the key used of each window, by window name."""
        query = (
            sa.select(plan_window_usage)
            .where(plan_window_usage.c.key_id == key_id)
            .order_by(plan_window_usage.c.name)
        )
        return await self.db.read(
            lambda conn: [
                WindowUsage(r.name, float(r.used), r.resets_at) for r in conn.execute(query)
            ]
        )


def _record_one(conn: sa.Connection, window: PlanWindow, key_id: str | None) -> None:
    row = conn.execute(sa.select(plan_windows).where(plan_windows.c.name == window.name)).first()
    values = {
        "status": window.status,
        "utilization": window.utilization,
        "resets_at": window.resets_at,
        "seen_at": window.seen_at,
    }
    if row is None:
        conn.execute(plan_windows.insert().values(name=window.name, **values))
        before = 0.0
    else:
        if row.seen_at > window.seen_at:
            return
        conn.execute(
            plan_windows.update().where(plan_windows.c.name == window.name).values(**values)
        )
        # A new reset time is a new window: everything used so far was in the old one.
        same = row.resets_at == window.resets_at
        before = float(row.utilization) if same and row.utilization is not None else 0.0
    if key_id is None or window.utilization is None or window.utilization <= before:
        return
    _add_usage(conn, window, key_id, window.utilization - before)


def _add_usage(conn: sa.Connection, window: PlanWindow, key_id: str, delta: float) -> None:
    where = sa.and_(plan_window_usage.c.name == window.name, plan_window_usage.c.key_id == key_id)
    row = conn.execute(sa.select(plan_window_usage).where(where)).first()
    if row is None:
        conn.execute(
            plan_window_usage.insert().values(
                name=window.name, key_id=key_id, resets_at=window.resets_at, used=delta
            )
        )
    elif row.resets_at != window.resets_at:
        conn.execute(
            plan_window_usage.update().where(where).values(resets_at=window.resets_at, used=delta)
        )
    else:
        conn.execute(
            plan_window_usage.update().where(where).values(used=plan_window_usage.c.used + delta)
        )
