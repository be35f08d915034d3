"""The hottest statements, run straight on the SQLite driver.

Measured inside a running gateway, SQLAlchemy's own work per statement (building and caching
the statement, its parameters, events, the result) costs several times what SQLite spends on
it, and it is paid on every request's path: storing the job before it runs and storing its
end, and the audit log's batch of rows. These few statements are written here as SQL text
for SQLite; every value is converted by its column's own SQLAlchemy bind processor (the
dialect's), so a row is stored exactly as SQLAlchemy would store it and every other query
reads it back unchanged. Driver errors are raised as
SQLAlchemy's exceptions, as everywhere else in the store. PostgreSQL keeps the Core statements.
"""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

Processor = Callable[[Any], Any] | None
# Per dialect (an engine's), per table: the columns' bind processors, looked up once.
_processors: weakref.WeakKeyDictionary[sa.Dialect, dict[str, dict[str, Processor]]] = (
    weakref.WeakKeyDictionary()
)


def is_sqlite(conn: sa.Connection) -> bool:
    """True when ``conn`` talks to SQLite (the fast statements apply)."""
    return conn.dialect.name == "sqlite"


def _processors_of(table: sa.Table, dialect: sa.Dialect) -> dict[str, Processor]:
    tables = _processors.setdefault(dialect, {})
    found = tables.get(table.name)
    if found is None:
        # The dialect's own form of each type, as SQLAlchemy's statements use it: a type's
        # generic processor leaves a timestamp to the driver, which drops ".000000".
        found = tables[table.name] = {
            c.name: c.type.dialect_impl(dialect).bind_processor(dialect) for c in table.c
        }
    return found


def processors(conn: sa.Connection, table: sa.Table) -> Mapping[str, Processor]:
    """Each column's bind processor, by name (None: its values go to the driver as they are)."""
    return _processors_of(table, conn.dialect)


def stored_values(
    conn: sa.Connection, table: sa.Table, values: Mapping[str, Any]
) -> dict[str, Any]:
    """``values`` (by column name) as SQLAlchemy would hand them to the driver."""
    processors = _processors_of(table, conn.dialect)
    out: dict[str, Any] = {}
    for name, value in values.items():
        process = processors[name]
        out[name] = process(value) if process is not None else value
    return out


def execute(conn: sa.Connection, sql: str, params: Mapping[str, Any]) -> sqlite3.Cursor:
    """Run ``sql`` with named parameters on ``conn``'s driver connection, inside the
    transaction ``conn`` holds."""
    driver: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
    try:
        return driver.execute(sql, params)
    except sqlite3.Error as exc:
        raise _wrapped(sql, exc) from exc


def execute_many(conn: sa.Connection, sql: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Run ``sql`` once per row of named parameters, in ``conn``'s transaction."""
    driver: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
    try:
        driver.executemany(sql, rows)
    except sqlite3.Error as exc:
        raise _wrapped(sql, exc) from exc


def _wrapped(sql: str, exc: sqlite3.Error) -> sa.exc.StatementError:
    # hide_parameters: the message never quotes stored values, as with the engines.
    return sa.exc.DBAPIError.instance(sql, None, exc, sqlite3.Error, hide_parameters=True)


_inserts: dict[tuple[str, tuple[str, ...]], str] = {}


def insert_many(
    conn: sa.Connection, table: sa.Table, names: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Insert ``rows`` (each one value per column of ``names``, in that order) into
    ``table`` with one ``executemany`` in ``conn``'s transaction, each value converted by
    its column's bind processor as SQLAlchemy's own insert converts it."""
    names = tuple(names)
    sql = _inserts.get((table.name, names))
    if sql is None:
        # Column names from the schema, never outside text.
        sql = _inserts[(table.name, names)] = (
            f'INSERT INTO "{table.name}" ({column_list(names)}) '  # noqa: S608
            f"VALUES ({', '.join(['?'] * len(names))})"
        )
    processors = _processors_of(table, conn.dialect)
    converting = [(i, p) for i, name in enumerate(names) if (p := processors[name]) is not None]
    params: list[Sequence[Any]] = []
    for row in rows:
        if converting:
            row = list(row)
            for i, process in converting:
                row[i] = process(row[i])
        params.append(row)
    driver: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
    try:
        driver.executemany(sql, params)
    except sqlite3.Error as exc:
        raise _wrapped(sql, exc) from exc


def column_list(names: Sequence[str]) -> str:
    """``names`` quoted as SQLite identifiers, comma-separated."""
    return ", ".join(f'"{name}"' for name in names)
