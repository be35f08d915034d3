"""Connections to the store. Each store operation is one plain function over a SQLAlchemy
``Connection``; ``Database`` decides where it runs:

- SQLite: right on the event loop, one operation at a time, so every write of the process
  goes through a single writer by construction. SQLite answers these small operations in tens
  of microseconds; handing them to a thread costs more than that, and a writer thread
  contending for the GIL with the event loop costs milliseconds. When another process holds
  the write lock (``ccgate keys`` while ``serve`` runs), the operation gives the loop back and
  retries instead of blocking it.
- PostgreSQL: on asyncpg through SQLAlchemy's ``run_sync``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
T = TypeVar("T")
Operation = Callable[[sa.Connection], T]

# How long one attempt may wait for another process's write lock before yielding the loop.
_SQLITE_BUSY_MS = 20
_SQLITE_LOCK_PATIENCE_SECS = 30.0


def engine_url(url: str) -> str:
    """Return ``url`` with the driver ccgate uses for its dialect."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    driver = "sqlite+pysqlite" if parsed.get_backend_name() == "sqlite" else "postgresql+asyncpg"
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, open transactions, so BEGIN really starts one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # IMMEDIATE takes the write lock at BEGIN: other processes wait on busy_timeout rather
    # than failing mid-transaction when a read turns into a write. Reads open no transaction
    # of their own: each query reads one consistent WAL snapshot.
    if conn.info.get("ccgate.write"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """Runs store operations: ``read`` for queries, ``write`` for transactions that commit."""

    def __init__(self, url: str) -> None:
        self.url = engine_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        self._async: AsyncEngine | None = None
        self._sync: sa.Engine | None = None
        self._bulk_reader: sa.Engine | None = None
        self._loop_conn: sa.Connection | None = None
        self._driver: Any = None  # the one SQLite connection, for ``change_marker``
        self._driver_epoch = 0
        # ``api_keys`` rows this connection wrote, counted by its temporary triggers, and
        # the schema version those triggers were made for (None: not made yet).
        self._key_writes = 0
        self._armed_schema: int | None = None
        if self.dialect == "sqlite":
            # hide_parameters: a failed statement's message never quotes stored values.
            self._sync = sa.create_engine(
                self.url, poolclass=sa.pool.StaticPool, hide_parameters=True
            )
            event.listen(self._sync, "connect", _sqlite_pragmas)
            event.listen(self._sync, "begin", _sqlite_begin)
            if make_url(self.url).database not in (None, "", ":memory:"):
                # A connection per bulk read, opened in the worker thread that uses it.
                self._bulk_reader = sa.create_engine(
                    self.url, poolclass=sa.pool.NullPool, hide_parameters=True
                )
                event.listen(self._bulk_reader, "connect", _sqlite_pragmas)
                event.listen(self._bulk_reader, "begin", _sqlite_begin)  # for write_bulk
        else:
            self._async = create_async_engine(
                self.url, pool_size=10, max_overflow=10, pool_pre_ping=True, hide_parameters=True
            )

    async def read(self, operation: Operation[T]) -> T:
        """Run ``operation`` on a connection for queries that change nothing."""
        if self._sync is not None:
            return await self._run_sqlite(operation, write=False)
        assert self._async is not None
        async with self._async.connect() as conn:
            return await conn.run_sync(operation)

    async def read_bulk(self, operation: Operation[T]) -> T:
        """Run a query that moves a lot of data (file bytes) without holding the event loop:
        on SQLite in a worker thread, on a connection of its own (WAL lets it read beside the
        writer); on PostgreSQL as ``read``, whose driver never blocks the loop on I/O."""
        if self._bulk_reader is None:
            return await self.read(operation)
        return await asyncio.to_thread(self._read_on_own_connection, operation)

    def _read_on_own_connection(self, operation: Operation[T]) -> T:
        assert self._bulk_reader is not None
        with self._bulk_reader.connect() as conn:
            return operation(conn)

    async def write_bulk(self, operation: Operation[T]) -> T:
        """Run a transaction that writes a lot at once (a batch's 100,000 requests) without
        holding the event loop: on SQLite in a worker thread, on a connection of its own that
        takes the write lock with ``BEGIN IMMEDIATE`` and waits for it there (the loop's own
        writes meanwhile yield and retry, as they do for another process's lock); on
        PostgreSQL as ``write``."""
        if self._bulk_reader is None:
            return await self.write(operation)
        return await asyncio.to_thread(self._write_on_own_connection, operation)

    def _write_on_own_connection(self, operation: Operation[T]) -> T:
        assert self._bulk_reader is not None
        with self._bulk_reader.connect() as conn:
            # Blocking here blocks this worker thread only: wait as long as the loop would.
            patience_ms = int(_SQLITE_LOCK_PATIENCE_SECS * 1000)
            driver = conn.connection.driver_connection
            assert driver is not None
            driver.execute(f"PRAGMA busy_timeout={patience_ms}")
            conn.info["ccgate.write"] = True
            with conn.begin():
                return operation(conn)

    async def write(self, operation: Operation[T]) -> T:
        """Run ``operation`` in a transaction that commits when it returns."""
        if self._sync is not None:
            return await self._run_sqlite(operation, write=True)
        assert self._async is not None
        async with self._async.begin() as conn:
            return await conn.run_sync(operation)

    async def _run_sqlite(self, operation: Operation[T], *, write: bool) -> T:
        deadline = time.monotonic() + _SQLITE_LOCK_PATIENCE_SECS
        pause = 0.005
        while True:
            try:
                return self._run_sync(operation, write)
            except sa.exc.OperationalError as exc:
                if "locked" not in str(exc.orig) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)

    def _run_sync(self, operation: Operation[T], write: bool) -> T:
        # One connection kept open for the loop's operations (they never overlap): checking
        # it out of the pool and resetting it for every operation cost as much as a query.
        conn = self._loop_conn
        if conn is None:
            assert self._sync is not None
            conn = self._loop_conn = self._sync.connect()
        conn.info["ccgate.write"] = write
        try:
            with conn.begin():
                return operation(conn)
        except BaseException:
            # Whatever state a failure left it in, the next operation starts on a fresh one.
            self._loop_conn = None
            conn.close()
            raise

    def change_marker(self) -> tuple[int, int, int] | None:
        """On SQLite, a value that differs once a key row may have changed since it was last
        read: SQLite's ``data_version`` (any commit of another connection or process, to any
        table), the number of ``api_keys`` rows this process's own connection wrote (counted
        by temporary triggers on that connection, so its writes to other tables, the audit
        log's, the jobs', change nothing), and which connection answered (a version is only
        comparable on one connection; a new one, or any schema change, which may have taken
        the triggers away, starts a new epoch with the triggers made again). Microseconds, no
        transaction. None on PostgreSQL, where other nodes write unseen, and when the
        connection cannot answer."""
        if self._sync is None:
            return None
        try:
            driver = self._driver
            if driver is None:
                driver = self._run_sync(lambda conn: conn.connection.driver_connection, False)
                self._driver = driver
                self._driver_epoch += 1
                self._armed_schema = None
            version = driver.execute("PRAGMA data_version").fetchone()[0]
            schema = driver.execute("PRAGMA main.schema_version").fetchone()[0]
            if schema != self._armed_schema:
                # First use, or the schema changed: a dropped or renamed ``api_keys`` (a
                # migration rebuilding it) took its triggers away or along.
                self._arm(driver)
                self._armed_schema = schema
                self._driver_epoch += 1
        except Exception:  # a closed or replaced connection, no api_keys table yet: no marker
            self._driver = None
            return None
        return self._driver_epoch, int(version), self._key_writes

    def _arm(self, driver: Any) -> None:
        """Make (again) the temporary triggers that count this connection's ``api_keys``
        writes. The function first: a trigger calling a missing function fails its write."""
        driver.create_function("ccgate_key_row_written", 0, self._count_key_write)
        for event_name, create in _KEY_TRIGGERS.items():
            # Dropped first: a renamed table keeps its triggers, the new one needs its own.
            driver.execute(f"DROP TRIGGER IF EXISTS temp.ccgate_key_row_{event_name}")
            driver.execute(create)

    def _count_key_write(self) -> None:
        self._key_writes += 1

    async def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        await self.read(lambda conn: conn.execute(sa.text("SELECT 1")).scalar())

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        await self.write(_upgrade_to_head)

    async def close(self) -> None:
        """Release every connection and thread."""
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None
        if self._sync is not None:
            self._sync.dispose()
        if self._bulk_reader is not None:
            self._bulk_reader.dispose()
        if self._async is not None:
            await self._async.dispose()


# Temporary (this connection's own) triggers counting every row it inserts, updates or
# deletes in ``api_keys``, whatever statement does it.
_KEY_TRIGGERS = {
    event_name.lower(): f"CREATE TEMP TRIGGER ccgate_key_row_{event_name.lower()} AFTER"
    f" {event_name} ON main.api_keys BEGIN SELECT ccgate_key_row_written(); END"
    for event_name in ("INSERT", "UPDATE", "DELETE")
}


def _upgrade_to_head(conn: sa.Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = conn
    command.upgrade(config, "head")
