"""Usage reports: the admin view of every key and ``GET /api/v1/usage`` for the caller."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from ccgate.api.deps import app_services
from ccgate.store import AuditEntry, Store
from tests.integration.conftest import Gateway

TOKEN = "admin-token-for-tests-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def gw(gateway_factory: Callable[..., Any]) -> Gateway:
    """A gateway with the admin API turned on."""
    return await gateway_factory(CCGATE_ADMIN_TOKEN=TOKEN)  # type: ignore[no-any-return]


def _row(
    at: str,
    key: str | None = "app",
    *,
    model: str = "sonnet",
    status: int = 200,
    tokens: tuple[int, int] = (5, 7),
    cost: float = 0.001,
) -> AuditEntry:
    return AuditEntry(
        at=datetime.fromisoformat(at).replace(tzinfo=UTC),
        request_id="req_1",
        door="native",
        route="/api/v1/run",
        http_status=status,
        duration_ms=3,
        key_name=key,
        model=model,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cost_usd=cost,
    )


async def _admin_usage(gw: Gateway, query: str = "") -> httpx.Response:
    return await gw.client.get(f"/admin/usage?{query}", headers=ADMIN)


async def test_usage_admin_counts_requests_tokens_cost_and_errors(gw: Gateway) -> None:
    """Real requests through the runner add up; a refused request counts as an error."""
    await gw.run({"prompt": "one"})
    await gw.run({"prompt": "two"})
    await gw.run({"prompt": ""})
    await app_services(gw.app).audit.flush()
    response = await _admin_usage(gw)
    assert response.status_code == 200
    assert response.json()["data"] == [
        {
            "key": "app",
            "requests": 3,
            "input_tokens": 10,
            "output_tokens": 14,
            "cost_usd": 0.002,
            "errors": 1,
        }
    ]


async def test_usage_admin_groups_by_model(gw: Gateway) -> None:
    """``group_by=model`` splits one key's numbers per model it ran."""
    await gw.run({"prompt": "a", "model": "haiku"})
    await gw.run({"prompt": "b", "model": "haiku"})
    await gw.run({"prompt": "c"})
    await app_services(gw.app).audit.flush()
    body = (await _admin_usage(gw, "group_by=model")).json()
    assert body["group_by"] == "model"
    by_model = {row["model"]: (row["requests"], row["output_tokens"]) for row in body["data"]}
    assert by_model == {"haiku": (2, 14), "sonnet": (1, 7)}


async def test_usage_admin_groups_by_utc_day_within_a_window(gw: Gateway) -> None:
    """Days are UTC days; a date as ``until`` includes that whole day, a time excludes it."""
    await app_services(gw.app).store.audit.append_many(
        [
            _row("2024-05-01T00:00:00"),
            _row("2024-05-01T23:59:59"),
            _row("2024-05-02T00:30:00", status=429, tokens=(0, 0), cost=0),
        ]
    )
    days = (await _admin_usage(gw, "group_by=day")).json()["data"]
    assert [(d["day"], d["requests"], d["errors"]) for d in days] == [
        ("2024-05-01", 2, 0),
        ("2024-05-02", 1, 1),
    ]
    whole_day = (await _admin_usage(gw, "until=2024-05-01")).json()
    assert whole_day["data"][0]["requests"] == 2
    assert whole_day["until"] == "2024-05-02T00:00:00+00:00"
    morning = await _admin_usage(gw, "since=2024-05-01T01:00:00%2B01:00&until=2024-05-01T12:00Z")
    assert morning.json()["data"][0]["requests"] == 1


async def test_usage_admin_filters_one_key(gw: Gateway) -> None:
    """``key=`` limits the report to that key; an unknown key has no rows."""
    await app_services(gw.app).store.audit.append_many(
        [_row("2024-05-01T10:00:00"), _row("2024-05-01T10:00:00", key="other")]
    )
    assert [r["key"] for r in (await _admin_usage(gw)).json()["data"]] == ["app", "other"]
    assert [r["key"] for r in (await _admin_usage(gw, "key=other")).json()["data"]] == ["other"]
    assert (await _admin_usage(gw, "key=ghost")).json()["data"] == []


@pytest.mark.parametrize(
    "query",
    [
        "since=yesterday",
        "until=2024-13-01",
        "group_by=week",
        "since=2024-05-02&until=2024-05-01T12:00",
        "key=no%20way",
    ],
)
async def test_usage_admin_rejects_bad_parameters(gw: Gateway, query: str) -> None:
    """Unparseable times, an empty window, an unknown grouping or a bad key name are 400s."""
    response = await _admin_usage(gw, query)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request"


async def test_usage_store_totals_agree_on_every_backend(store: Store) -> None:
    """SQLite and PostgreSQL sum, group by UTC day and model, and skip keyless rows alike."""
    await store.audit.append_many(
        [
            _row("2024-05-01T23:30:00", model="haiku"),
            _row("2024-05-02T00:10:00"),
            _row("2024-05-02T08:00:00", status=500, tokens=(1, 0), cost=0.5),
            _row("2024-05-02T09:00:00", key=None, status=401),
        ]
    )
    days = await store.usage.totals(group_by="day")
    assert [(r.group, r.requests, r.input_tokens, r.errors) for r in days] == [
        ("2024-05-01", 1, 5, 0),
        ("2024-05-02", 2, 6, 1),
    ]
    [total] = await store.usage.totals(since=datetime(2024, 5, 2, tzinfo=UTC))
    assert (total.requests, total.output_tokens, round(total.cost_usd, 6)) == (2, 7, 0.501)
    models = await store.usage.totals(key_name="app", group_by="model")
    assert {r.group: r.requests for r in models} == {"haiku": 1, "sonnet": 2}


async def test_usage_own_shows_only_the_callers_numbers(gw: Gateway) -> None:
    """A key sees its own totals and policy, never another key's."""
    from ccgate.policy import KeyPolicy

    other = (await app_services(gw.app).keyring.create("other", KeyPolicy(rpm=30))).secret
    await gw.run({"prompt": "mine"})
    await gw.run({"prompt": "mine too"})
    await gw.client.post("/api/v1/run", json={"prompt": "theirs"}, headers=gw.auth(other))
    await app_services(gw.app).audit.flush()
    response = await gw.client.get("/api/v1/usage", headers=gw.auth(other))
    assert response.status_code == 200
    body = response.json()
    assert body["key"] == "other" and body["policy"]["rpm"] == 30
    assert [(r["key"], r["requests"], r["input_tokens"]) for r in body["data"]] == [("other", 1, 5)]


async def test_usage_own_says_what_the_limits_leave(gw: Gateway) -> None:
    """The caller sees its live counters and what its token, budget and concurrency limits
    leave; limits it does not have leave None."""
    from ccgate.policy import KeyPolicy

    policy = KeyPolicy(tokens_per_day=100, budget_usd_per_month=1.0)
    secret = (await app_services(gw.app).keyring.create("capped", policy)).secret
    for prompt in ("one", "two"):
        await gw.client.post("/api/v1/run", json={"prompt": prompt}, headers=gw.auth(secret))
    body = (await gw.client.get("/api/v1/usage", headers=gw.auth(secret))).json()
    assert body["used"]["tokens_today"] == 24
    assert body["remaining"] == {
        "tokens_per_day": 76,
        "budget_usd_per_month": 0.998,
        "concurrency": None,
    }


async def test_usage_own_matches_the_admin_view(gw: Gateway) -> None:
    """The caller's report has the same numbers the admin sees for that key."""
    await gw.run({"prompt": "a", "model": "haiku"})
    await gw.run({"prompt": "b"})
    await app_services(gw.app).audit.flush()
    admin = (await _admin_usage(gw, "key=app&group_by=model&since=2000-01-01")).json()
    own = (
        await gw.client.get("/api/v1/usage?group_by=model&since=2000-01-01", headers=gw.auth())
    ).json()
    assert own["data"] == admin["data"] and len(own["data"]) == 2
    assert (own["since"], own["group_by"]) == ("2000-01-01T00:00:00+00:00", "model")


async def test_usage_own_needs_an_app_key(gw: Gateway) -> None:
    """Without a key, or with the admin token instead of one, the answer is 401."""
    for headers in ({}, ADMIN):
        response = await gw.client.get("/api/v1/usage", headers=headers)
        assert response.status_code == 401
    bad = await gw.client.get("/api/v1/usage?since=soon", headers=gw.auth())
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"


async def test_usage_counts_async_jobs_once_they_end(gateway_factory: Callable[..., Any]) -> None:
    """A 202 job's tokens and cost reach its audit row, and so the usage report."""
    token = "admin-token-for-usage-0123456789abcdef"
    gateway = await gateway_factory(CCGATE_ADMIN_TOKEN=token)
    submitted = await gateway.client.post(
        "/api/v1/jobs", json={"prompt": "later"}, headers=gateway.auth()
    )
    await app_services(gateway.app).jobs.wait(submitted.json()["job_id"])
    await app_services(gateway.app).audit.flush()
    report = (
        await gateway.client.get("/admin/usage", headers={"Authorization": f"Bearer {token}"})
    ).json()
    [row] = [r for r in report["data"] if r["key"] == "app"]
    assert (row["input_tokens"], row["output_tokens"]) == (5, 7)
    assert row["cost_usd"] == 0.001
