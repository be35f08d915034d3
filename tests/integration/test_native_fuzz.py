"""Whatever a client sends to /api/v1/run or the list, usage and audit queries, never a 5xx.

The generators hold what no backend stores as sent: NaN and Infinity, NUL and lone
surrogates inside strings and keys, huge integers, calendar extremes and deep nesting. Each
test runs on SQLite and on PostgreSQL, which refuses NUL in text and NaN in JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import Gateway
from tests.support.hostile_json import (
    hostile_json,
    query_dates,
    query_numbers,
    query_words,
    raw_bodies,
)

ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdefghij"
_RUN_FIELDS = [
    "prompt",
    "model",
    "system_prompt",
    "append_system_prompt",
    "response_format",
    "timeout_secs",
    "metadata",
    "session_id",
    "files",
]
_fields = st.fixed_dictionaries({}, optional=dict.fromkeys(_RUN_FIELDS, hostile_json))
_valid_with_hostile_metadata = st.fixed_dictionaries(
    {
        "prompt": st.just("hi"),
        "metadata": st.dictionaries(st.text(max_size=5), hostile_json, min_size=1, max_size=3),
    }
)
_fuzz = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
async def fuzz_gateway(db_gateway_factory: Callable[..., Any]) -> Gateway:
    """A gateway with the admin API on, on SQLite and on PostgreSQL."""
    return await db_gateway_factory(CCGATE_ADMIN_TOKEN=ADMIN_TOKEN)  # type: ignore[no-any-return]


def _shaped(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= {"type", "message", "request_id"}


@_fuzz
@given(body=_fields | _valid_with_hostile_metadata | hostile_json)
async def test_fuzz_run_body_never_500(fuzz_gateway: Gateway, body: Any) -> None:
    """Random JSON bodies get a 2xx or a 4xx in the error shape, never a 5xx."""
    _shaped(
        await fuzz_gateway.client.post(
            "/api/v1/run", content=json.dumps(body), headers=fuzz_gateway.auth()
        )
    )


@_fuzz
@given(raw=raw_bodies(_RUN_FIELDS, {"prompt": "hi"}) | raw_bodies(["metadata"], {}))
async def test_fuzz_run_raw_literals_never_500(fuzz_gateway: Gateway, raw: str) -> None:
    """Bodies with NaN, 1e999, 5000-digit integers, escaped NUL or surrogates and deep
    nesting written straight into the JSON get a 4xx or a 2xx, never a 5xx."""
    _shaped(await fuzz_gateway.client.post("/api/v1/run", content=raw, headers=fuzz_gateway.auth()))


_ROUTE_PARAMS = {
    "/api/v1/jobs": ["limit", "offset", "status"],
    "/api/v1/usage": ["since", "until", "group_by"],
    "/admin/usage": ["key", "since", "until", "group_by"],
    "/admin/audit": ["key", "status", "limit"],
}
_PARAM_VALUES = {
    "limit": query_numbers,
    "offset": query_numbers,
    "since": query_dates,
    "until": query_dates,
    "status": query_words,
    "group_by": query_words,
    "key": query_words,
}


@st.composite
def _route_queries(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    route = draw(st.sampled_from(sorted(_ROUTE_PARAMS)))
    names = draw(
        st.lists(st.sampled_from(_ROUTE_PARAMS[route]), min_size=1, max_size=3, unique=True)
    )
    return route, {name: draw(_PARAM_VALUES[name]) for name in names}


@_fuzz
@given(query=_route_queries())
async def test_fuzz_list_usage_audit_queries_never_500(
    fuzz_gateway: Gateway, query: tuple[str, dict[str, str]]
) -> None:
    """Random query strings on the job list, usage and audit routes never get a 5xx."""
    route, params = query
    auth = (
        {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        if route.startswith("/admin")
        else fuzz_gateway.auth()
    )
    _shaped(await fuzz_gateway.client.get(route, params=params, headers=auth))
