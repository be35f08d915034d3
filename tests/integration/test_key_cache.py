"""The keyring's key cache on SQLite: a hit while nothing was written, and every revocation or
policy change, from this process or another, seen at the key's very next request."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from ccgate.audit import AuditLog
from ccgate.clock import utcnow
from ccgate.policy import KeyPolicy
from ccgate.security.keyring import Keyring
from ccgate.store import AuditEntry, JobStatus, KeyRecord, Store
from tests.support.clock import install_manual_clock


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


def _audit_row(request_id: str) -> AuditEntry:
    return AuditEntry(
        at=utcnow(),
        request_id=request_id,
        door="native",
        route="/api/v1/run",
        http_status=200,
        duration_ms=3,
        key_name="app",
    )


async def _flush_one_request(store: Store, n: int, key_id: str | None = None) -> None:
    """What one request of key ``key_id`` writes: its job's start and end, its audit row."""
    now = utcnow()
    job_id = f"job_{n}"
    await store.jobs.insert(
        job_id=job_id,
        key_id=key_id,
        door="native",
        model="sonnet",
        request={"prompt": "hi"},
        metadata=None,
        now=now,
        claim_for="node",
        lease_until=now + timedelta(seconds=30),
    )
    await store.jobs.finish(job_id, JobStatus.COMPLETED, now=now, result="ok")
    audit = AuditLog(store)
    audit.record(_audit_row(f"req_{n}"))
    await audit.flush()


async def test_key_cache_survives_audit_and_job_writes(sqlite_store: Store) -> None:
    """Audit flushes and job writes of this process leave cached keys cached: repeat
    requests between them read the key row no more."""
    keyring = Keyring(sqlite_store)
    created = await keyring.create("app")
    assert await keyring.verify(created.secret) is not None  # read, then last_used_at written
    assert await keyring.verify(created.secret) is not None  # read again, cached
    lookups = _count_lookups(sqlite_store)
    for n in range(3):
        await _flush_one_request(sqlite_store, n, created.record.id)
        assert await keyring.verify(created.secret) is not None
    assert lookups == []


async def test_key_cache_refuses_a_key_revoked_right_after_an_audit_flush(
    sqlite_store: Store,
) -> None:
    """A revocation written just after an audit flush refuses the key at its next request."""
    keyring = Keyring(sqlite_store)
    created = await keyring.create("app")
    assert await keyring.verify(created.secret) is not None
    assert await keyring.verify(created.secret) is not None
    await _flush_one_request(sqlite_store, 1, created.record.id)
    assert await keyring.verify(created.secret) is not None  # still cached
    assert await Keyring(sqlite_store).revoke("app")
    await _flush_one_request(sqlite_store, 2, created.record.id)
    assert await keyring.verify(created.secret) is None


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE api_keys SET revoked_at = '2020-01-01 00:00:00.000000' WHERE name = 'app'",
        "UPDATE api_keys SET expires_at = '2020-01-01 00:00:00.000000' WHERE name = 'app'",
        "DELETE FROM api_keys WHERE name = 'app'",
    ],
)
async def test_key_cache_sees_any_statement_of_this_process_on_a_key_row(
    sqlite_store: Store, statement: str
) -> None:
    """A key row revoked, expired or deleted by any statement this process runs (not only
    the key table's own) refuses the key at its very next request."""
    keyring = Keyring(sqlite_store)
    created = await keyring.create("app")
    assert await keyring.verify(created.secret) is not None
    assert await keyring.verify(created.secret) is not None
    await _flush_one_request(sqlite_store, 1)
    await sqlite_store.db.write(lambda conn: conn.exec_driver_sql(statement))
    assert await keyring.verify(created.secret) is None


async def test_key_cache_sees_a_policy_change_by_another_connection_of_this_process(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """A policy changed through a second store on the same file (``ccgate keys`` run in
    process) applies to the key's very next request, audit flush or not."""
    keyring = Keyring(sqlite_store)
    created = await keyring.create("app")
    assert await keyring.verify(created.secret) is not None
    assert await keyring.verify(created.secret) is not None
    other = await Store.open(f"sqlite:///{tmp_path / 'keys.db'}")
    try:
        await _flush_one_request(sqlite_store, 1)
        assert await Keyring(other).update("app", {"rpm": 7}) is not None
        await _flush_one_request(sqlite_store, 2)
    finally:
        await other.close()
    record = await keyring.verify(created.secret)
    assert record is not None and record.policy.rpm == 7


async def test_key_cache_sees_an_expiry_passing(
    sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached key is refused once its expiry passes, with nothing written meanwhile."""
    clock = install_manual_clock(monkeypatch)
    keyring = Keyring(sqlite_store)
    created = await keyring.create("app", KeyPolicy(expires_at=utcnow() + timedelta(seconds=5)))
    assert await keyring.verify(created.secret) is not None
    assert await keyring.verify(created.secret) is not None
    clock.advance(6)
    assert await keyring.verify(created.secret) is None


@pytest.mark.parametrize(
    "statements",
    [
        (  # SQLite's batch migration: a copy takes the table's place
            "CREATE TABLE api_keys_copy AS SELECT * FROM api_keys",
            "DROP TABLE api_keys",
            "ALTER TABLE api_keys_copy RENAME TO api_keys",
        ),
        (  # the table renamed away (its triggers follow it) and a new one made
            "ALTER TABLE api_keys RENAME TO api_keys_old",
            "CREATE TABLE api_keys AS SELECT * FROM api_keys_old",
        ),
    ],
)
async def test_key_cache_sees_a_revocation_after_the_key_table_is_rebuilt(
    sqlite_store: Store, statements: tuple[str, ...]
) -> None:
    """After ``api_keys`` is rebuilt by this process (as a SQLite migration rebuilds a
    table), a revocation it writes still refuses the key at its very next request."""
    keyring = Keyring(sqlite_store)
    created = await keyring.create("app")
    assert await keyring.verify(created.secret) is not None
    assert await keyring.verify(created.secret) is not None

    def rebuild(conn: sa.Connection) -> None:
        for statement in statements:
            conn.exec_driver_sql(statement)

    await sqlite_store.db.write(rebuild)
    assert await keyring.verify(created.secret) is not None
    assert await keyring.verify(created.secret) is not None  # cached again
    assert await keyring.revoke("app")
    assert await keyring.verify(created.secret) is None
