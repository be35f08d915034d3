"""The keyring's key cache on SQLite: a hit while nothing was written, and every revocation or
policy change, from this process or another, seen at the key's very next request."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ccgate.policy import KeyPolicy
from ccgate.security.keyring import Keyring
from ccgate.store import KeyRecord, Store


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh SQLite store in tmp_path (the file another process can open too)."""
    store = await Store.open(f"sqlite:///{tmp_path / 'keys.db'}")
    try:
        yield store
    finally:
        await store.close()


def _count_lookups(store: Store) -> list[str]:
    lookups: list[str] = []
    by_hash = store.keys.by_hash

    async def counted(secret_hash: str) -> KeyRecord | None:
        lookups.append(secret_hash)
        return await by_hash(secret_hash)

    store.keys.by_hash = counted  # type: ignore[method-assign]
    return lookups


async def _ccgate(tmp_path: Path, *args: str) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "CCGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'keys.db'}",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ccgate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


async def test_key_cache_answers_repeat_lookups_without_the_store(sqlite_store: Store) -> None:
    """While nothing is written, repeat requests skip the key query (the first request's
    last_used_at write costs one more lookup)."""
    keyring = Keyring(sqlite_store)
    created = await keyring.create("app")
    lookups = _count_lookups(sqlite_store)
    for _ in range(5):
        record = await keyring.verify(created.secret)
        assert record is not None and record.name == "app"
    assert len(lookups) == 2


async def test_key_cache_sees_a_revocation_by_another_process(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """``ccgate keys revoke`` in another process refuses the key at its very next request."""
    keyring = Keyring(sqlite_store)
    created = await keyring.create("app")
    assert await keyring.verify(created.secret) is not None
    assert await keyring.verify(created.secret) is not None  # now served from the cache
    await _ccgate(tmp_path, "keys", "revoke", "app")
    assert await keyring.verify(created.secret) is None


async def test_key_cache_sees_a_policy_change_by_another_process(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """A policy changed by another process applies to the key's very next request."""
    keyring = Keyring(sqlite_store)
    created = await keyring.create("app")
    assert await keyring.verify(created.secret) is not None
    await _ccgate(tmp_path, "keys", "update", "app", "--rpm", "7")
    record = await keyring.verify(created.secret)
    assert record is not None and record.policy.rpm == 7


async def test_key_cache_sees_a_revocation_written_in_this_process(sqlite_store: Store) -> None:
    """A revocation written by this process outside the keyring (a device's, an enrollment's)
    refuses the key at its very next request."""
    first, second = Keyring(sqlite_store), Keyring(sqlite_store)
    created = await first.create("app", KeyPolicy())
    assert await first.verify(created.secret) is not None
    assert await first.verify(created.secret) is not None
    assert await second.revoke("app")
    assert await first.verify(created.secret) is None


async def test_key_cache_marker_survives_a_replaced_connection(sqlite_store: Store) -> None:
    """A connection that cannot answer gives no marker (no cache hit); the next marker comes
    from a fresh connection and never equals one read on the old one."""
    db = sqlite_store.db
    before = db.change_marker()
    assert before is not None
    dead = sqlite3.connect(":memory:")
    dead.close()
    db._driver = dead
    assert db.change_marker() is None
    after = db.change_marker()
    assert after is not None and after != before
