"""SQLite: another process's write lock makes ccgate wait without freezing its event loop."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from ccgate.clock import utcnow
from ccgate.store import Store


async def test_sqlite_write_waits_for_foreign_lock_without_blocking_loop(tmp_path: Path) -> None:
    """While another connection holds the write lock, a store write waits, the loop keeps
    running other tasks, and the write lands once the lock is released."""
    store = await Store.open(f"sqlite:///{tmp_path / 'x.db'}")
    other = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    write = asyncio.create_task(
        store.keys.insert(
            key_id="key_1", name="app", prefix="p", secret_hash="h" * 64, now=utcnow()
        )
    )
    await asyncio.sleep(0.5)
    assert not write.done()
    assert ticks >= 10, "the event loop was blocked while the lock was held"
    other.execute("ROLLBACK")
    other.close()
    await asyncio.wait_for(write, 5)
    assert (await store.keys.by_name("app")) is not None
    ticking.cancel()
    await store.close()
