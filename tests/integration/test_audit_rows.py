"""Audit rows: route templates, values fitted to their columns, and no row lost for another's.

The store tests run on SQLite and PostgreSQL; PostgreSQL is where an over-long or NUL-holding
value used to make a whole batch (every tenant's usage in it) fail.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from ccgate.api.deps import app_services
from ccgate.audit import AuditLog
from ccgate.clock import utcnow
from ccgate.store import AuditEntry, Store
from ccgate.store.audit import AuditPosition, audit_page_query, fit_audit_row
from ccgate.store.schema import audit_log
from tests.integration.conftest import Gateway


def _entry(request_id: str, **facts: Any) -> AuditEntry:
    return AuditEntry(
        **{
            "at": utcnow(),
            "request_id": request_id,
            "door": "native",
            "route": "/api/v1/run",
            "http_status": 200,
            "duration_ms": 3,
            "key_name": "app",
            **facts,
        }
    )


async def test_audit_table_bad_row_loses_only_itself(store: Store) -> None:
    """A batch holding an over-long row and an unstorable one writes every other row."""
    batch = [
        _entry("req_good_1"),
        _entry("req_long", route="/api/" + "x" * 300),
        _entry("req_bad", duration_ms=2**70),
        _entry("req_good_2"),
    ]
    refused = await store.audit.append_many(batch)
    assert refused == ["req_bad"]
    written = {row["request_id"] for row in await store.audit.recent()}
    assert written == {"req_good_1", "req_long", "req_good_2"}


async def test_audit_table_fits_text_to_its_columns(store: Store) -> None:
    """Over-long text is cut to its column's length; NUL and lone surrogates are replaced."""
    await store.audit.append_many(
        [
            _entry(
                "req_1",
                route="/" + "r" * 400,
                key_name="k" * 150,
                client_ip="a\x00b",
                error_type="e\ud800" * 40,
                prompt_text="hello\x00world",
            )
        ]
    )
    (row,) = await store.audit.recent()
    assert len(row["route"]) == 200 and len(row["key_name"]) == 100
    assert row["client_ip"] == "a\ufffdb" and row["prompt_text"] == "hello\ufffdworld"
    assert row["error_type"] == ("e?" * 40)[:64]


async def test_audit_log_logs_only_the_refused_rows_request_id(store: Store) -> None:
    """A row the database refuses is logged by request id alone, never with its values."""
    audit = AuditLog(store)
    audit.record(_entry("req_fine"))
    audit.record(_entry("req_refused", duration_ms=2**70, prompt_text="secret prompt"))
    with structlog.testing.capture_logs() as logs:
        await audit.flush()
    assert [e for e in logs if e["log_level"] == "error"] == [
        {"event": "audit_row_refused", "request_id": "req_refused", "log_level": "error"}
    ]
    assert [r["request_id"] for r in await store.audit.recent()] == ["req_fine"]


async def test_audit_unmatched_long_path_loses_no_other_rows(
    db_gateway_factory: Callable[..., Any],
) -> None:
    """A 300-character unknown path from a client without a key is recorded as
    ``(unmatched)`` next to the keyed requests of the same batch, whose usage stays whole."""
    gw: Gateway = await db_gateway_factory()
    junk = gw.client.get("/api/" + "x" * 300)
    runs = [gw.run({"prompt": f"p{n}"}) for n in range(3)]
    responses = await asyncio.gather(junk, *runs)
    assert [r.status_code for r in responses] == [404, 200, 200, 200]
    await app_services(gw.app).audit.flush()
    rows = await app_services(gw.app).store.audit.recent()
    assert sorted(r["route"] for r in rows) == ["(unmatched)"] + ["/api/v1/run"] * 3
    usage = (await gw.client.get("/api/v1/usage", headers=gw.auth())).json()["data"]
    assert usage == [
        {
            "key": "app",
            "requests": 3,
            "input_tokens": 15,
            "output_tokens": 21,
            "cost_usd": 0.003,
            "errors": 0,
        }
    ]


async def test_audit_route_is_the_route_template(gateway: Gateway) -> None:
    """A job's poll is recorded under ``/api/v1/jobs/{job_id}``, not under the job's path."""
    job = (
        await gateway.client.post("/api/v1/jobs", json={"prompt": "x"}, headers=gateway.auth())
    ).json()
    await gateway.client.get(f"/api/v1/jobs/{job['job_id']}", headers=gateway.auth())
    await app_services(gateway.app).audit.flush()
    routes = [r["route"] for r in await app_services(gateway.app).store.audit.recent()]
    assert routes == ["/api/v1/jobs/{job_id}", "/api/v1/jobs"]


class _Explain(sa.Executable, sa.ClauseElement):
    """``EXPLAIN`` (PostgreSQL) or ``EXPLAIN QUERY PLAN`` (SQLite) of a query."""

    inherit_cache = False

    def __init__(self, query: sa.Select[Any]) -> None:
        self.query = query


@compiles(_Explain)
def _compile_explain(element: _Explain, compiler: SQLCompiler, **kw: Any) -> str:
    prefix = "EXPLAIN QUERY PLAN " if compiler.dialect.name == "sqlite" else "EXPLAIN "
    return prefix + compiler.process(element.query, **kw)


async def _plan(store: Store, query: sa.Select[Any]) -> str:
    """The plan of ``query``; on PostgreSQL with sequential scans and sorts priced out, so a
    small test table shows whether an index can serve the query in order, as a big one needs."""

    def explain(conn: sa.Connection) -> str:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            conn.exec_driver_sql("SET LOCAL enable_sort = off")
        return "\n".join(str(row[-1]) for row in conn.execute(_Explain(query)))

    plan: str = await store.db.read(explain)
    return plan


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({}, "ix_audit_at"),
        ({"key_name": "k1"}, "ix_audit_key_at"),
        ({"http_status": 500}, "ix_audit_status_at"),
        ({"job_status": "failed"}, "ix_audit_job_status_at"),
        ({"door": "openai"}, "ix_audit_door_at"),
    ],
)
async def test_audit_page_query_reads_one_index_in_order(
    store: Store, filters: dict[str, Any], index: str
) -> None:
    """Every filter of the admin audit view, with a cursor, is served by its own index in
    newest-first order, with no sort and no table scan, on SQLite and PostgreSQL: a page
    costs the same at a million rows as at ten."""
    await store.audit.append_many([_entry(f"req_{n}", key_name=f"k{n % 9}") for n in range(300)])
    position = AuditPosition(at=utcnow(), id=150)
    plan = await _plan(store, audit_page_query(101, before=position, **filters))
    # The index serves the filter and the cursor (SQLite: "at<?"; PostgreSQL: "ROW(at, id)").
    assert re.search(
        rf"(?i)using (index )?{index}\b.*(at<\?|Index Cond: .*ROW\(at, id\) <)", plan, re.DOTALL
    ), plan
    assert not re.search("TEMP B-TREE|Sort|Seq Scan|SCAN audit_log", plan), plan


async def test_audit_door_is_the_registry_door(gateway: Gateway) -> None:
    """Compat ``/run`` is audited as compat (as its job says); ``/v1/models`` as the SDK's door."""
    await gateway.client.post("/run", json={"prompt": "x"}, headers=gateway.auth())
    await gateway.client.get(
        "/v1/models", headers={**gateway.auth(), "anthropic-version": "2023-06-01"}
    )
    await gateway.client.get("/v1/models", headers=gateway.auth())
    await app_services(gateway.app).audit.flush()
    rows = await app_services(gateway.app).store.audit.recent()
    assert [(r["route"], r["door"]) for r in reversed(rows)] == [
        ("/run", "compat"),
        ("/v1/models", "anthropic"),
        ("/v1/models", "openai"),
    ]
    job = await app_services(gateway.app).store.jobs.get(rows[-1]["job_id"])
    assert job is not None and job.door == "compat"


async def test_audit_fast_rows_are_stored_as_sqlalchemy_stores_them(sqlite_store: Store) -> None:
    """On SQLite the driver-level batch insert writes each column in the very form
    SQLAlchemy's own insert writes (timestamps, a whole second's too, text, numbers, NULL)."""
    at = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    full = _entry(
        "req_x",
        at=at,
        client_ip="10.0.0.1",
        job_id="job_1",
        model="sonnet",
        job_status="completed",
        prompt_bytes=12,
        response_bytes=34,
        input_tokens=5,
        output_tokens=7,
        cost_usd=0.0125,
        error_type="overloaded",
        prompt_text="héllo \U0001f600",
    )
    sparse = _entry("req_y", at=at.replace(microsecond=0, tzinfo=None), key_name=None)
    assert await sqlite_store.audit.append_many([full, sparse]) == []
    core_rows = [{**fit_audit_row(e), "request_id": e.request_id + "_core"} for e in (full, sparse)]
    await sqlite_store.db.write(lambda conn: conn.execute(audit_log.insert(), core_rows))

    def raw(conn: sa.Connection) -> list[tuple[object, ...]]:
        names = ", ".join(c.name for c in audit_log.c if c.name not in ("id", "request_id"))
        query = sa.text(f"SELECT {names} FROM audit_log ORDER BY request_id")  # noqa: S608
        return [tuple(r) for r in conn.execute(query)]

    full_fast, full_core, sparse_fast, sparse_core = await sqlite_store.db.read(raw)
    assert full_fast == full_core and sparse_fast == sparse_core
    assert full_fast[0] == "2024-05-06 05:08:09.123456"
    assert sparse_fast[0] == "2024-05-06 07:08:09.000000"
