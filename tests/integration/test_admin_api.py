"""The admin API: token gate, keys with policies, audit rows and the circuit breaker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from ccgate.api.deps import app_services
from ccgate.circuit import CircuitBreaker
from ccgate.limits.headers import DOORS
from ccgate.runners.cli_command import CliOptions
from ccgate.runners.pool import PoolConfig
from ccgate.runners.pooled_cli import PooledCliRunner
from ccgate.security.keys import hash_secret
from ccgate.store import AuditEntry
from ccgate.store.schema import api_keys, audit_log
from tests.integration.conftest import Gateway
from tests.support.fake_claude_factory import make_fake_claude
from tests.support.fake_runner import FakeRunner

TOKEN = "admin-token-for-tests-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
StartGateway = Callable[..., Any]


@pytest.fixture
async def gw(gateway_factory: StartGateway) -> Gateway:
    """A gateway with the admin API turned on."""
    return await gateway_factory(CCGATE_ADMIN_TOKEN=TOKEN)  # type: ignore[no-any-return]


def _error(response: httpx.Response) -> dict[str, Any]:
    return response.json()["error"]  # type: ignore[no-any-return]


async def _create(gw: Gateway, **body: Any) -> dict[str, Any]:
    response = await gw.client.post("/admin/keys", json={"name": "svc", **body}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_admin_disabled_without_token_names_the_setting(gateway: Gateway) -> None:
    """With CCGATE_ADMIN_TOKEN unset every admin route answers 404 admin_disabled."""
    for method, path in (
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("GET", "/admin/usage"),
        ("POST", "/admin/circuit/reset"),
    ):
        response = await gateway.client.request(method, path, headers=ADMIN)
        assert response.status_code == 404
        assert _error(response)["type"] == "admin_disabled"
        assert "CCGATE_ADMIN_TOKEN" in _error(response)["message"]


async def test_admin_wrong_or_missing_token_is_401(gw: Gateway) -> None:
    """A wrong token, an app key or no token at all gets 401, never the data."""
    for headers in ({"Authorization": "Bearer nope"}, gw.auth(), {}):
        response = await gw.client.get("/admin/keys", headers=headers)
        assert response.status_code == 401
        assert _error(response)["type"] == "authentication_error"
    assert (await gw.client.get("/admin/keys", headers={"X-API-Key": TOKEN})).status_code == 200


def _client_from(gw: Gateway, peer: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=gw.app, client=(peer, 5555))
    return httpx.AsyncClient(transport=transport, base_url="http://ccgate.test")


async def test_admin_wrong_tokens_lock_out_that_address_with_429(gw: Gateway) -> None:
    """After five wrong tokens from one address, its next sign-in (even with the right token)
    is a 429 signin_throttled with Retry-After; another address still signs in."""
    async with (
        _client_from(gw, "203.0.113.5") as guesser,
        _client_from(gw, "198.51.100.9") as admin,
    ):
        for n in range(5):
            wrong = {"Authorization": f"Bearer {TOKEN[:-2]}{n:02d}"}
            assert (await guesser.get("/admin/keys", headers=wrong)).status_code == 401
        locked = await guesser.get("/admin/keys", headers=ADMIN)
        assert locked.status_code == 429
        assert _error(locked)["type"] == "signin_throttled"
        assert int(locked.headers["Retry-After"]) >= 1
        assert (await admin.get("/admin/keys", headers=ADMIN)).status_code == 200


async def test_admin_right_token_is_never_slowed_and_clears_failures(gw: Gateway) -> None:
    """A right token after a few wrong ones signs in at once and starts the count afresh."""
    wrong = {"Authorization": "Bearer " + "x" * 40}
    for _ in range(2):
        for _ in range(4):
            assert (await gw.client.get("/admin/keys", headers=wrong)).status_code == 401
        assert (await gw.client.get("/admin/keys", headers=ADMIN)).status_code == 200


async def test_admin_create_shows_secret_once_and_list_never(gw: Gateway) -> None:
    """The create answer holds the secret; neither the list nor the key's view ever does."""
    created = await _create(gw)
    secret, webhook_secret = created["key"], created["webhook_secret"]
    assert secret.startswith("ccg_") and webhook_secret.startswith("whsec_")
    assert created["prefix"] == secret[:12] and created["policy"]["rpm"] is None
    listed = await gw.client.get("/admin/keys", headers=ADMIN)
    one = await gw.client.get("/admin/keys/svc", headers=ADMIN)
    for text in (listed.text, one.text):
        assert secret not in text and webhook_secret not in text
        assert hash_secret(secret) not in text
    entry = next(k for k in listed.json()["data"] if k["name"] == "svc")
    assert entry == one.json()
    assert (entry["kind"], entry["active"], entry["expired"]) == ("app", True, False)


async def test_admin_created_key_works_and_only_its_hash_is_stored(gw: Gateway) -> None:
    """The new key runs prompts at once, and the database row holds its hash, not the key."""
    secret = (await _create(gw))["key"]
    response = await gw.client.post("/api/v1/run", json={"prompt": "hi"}, headers=gw.auth(secret))
    assert response.status_code == 200
    store = app_services(gw.app).store
    row = await store.db.read(
        lambda conn: (
            conn.execute(sa.select(api_keys).where(api_keys.c.name == "svc")).one()._mapping
        )
    )
    assert row["secret_hash"] == hash_secret(secret)
    assert all(secret not in str(value) for value in row.values())


async def test_admin_create_stores_a_normalised_policy(gw: Gateway) -> None:
    """Every policy field round-trips; networks are normalised and times become UTC."""
    created = await _create(
        gw,
        rpm=60,
        rpd=1000,
        tokens_per_day=50_000,
        budget_usd_per_month=5,
        concurrency=2,
        models=["haiku", "claude-*"],
        ip_cidrs=["10.1.2.3/8", "::1"],
        expires_at="2999-01-01T02:00:00+02:00",
        window_share=0.5,
    )
    assert created["policy"] == {
        "rpm": 60,
        "rpd": 1000,
        "tokens_per_day": 50_000,
        "budget_usd_per_month": 5.0,
        "concurrency": 2,
        "models": ["haiku", "claude-*"],
        "ip_cidrs": ["10.0.0.0/8", "::1/128"],
        "expires_at": "2999-01-01T00:00:00+00:00",
        "window_share": 0.5,
    }
    fetched = (await gw.client.get("/admin/keys/svc", headers=ADMIN)).json()
    assert fetched["policy"] == created["policy"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"rpm": 0}, "rpm"),
        ({"rpd": "10"}, "rpd"),
        ({"concurrency": True}, "concurrency"),
        ({"tokens_per_day": 2**40}, "tokens_per_day"),
        ({"budget_usd_per_month": -1}, "budget_usd_per_month"),
        ({"models": []}, "models"),
        ({"models": [""]}, "models"),
        ({"ip_cidrs": ["10.0.0.0/33"]}, "ip_cidrs"),
        ({"expires_at": "2001-01-01"}, "expires_at"),
        ({"expires_at": "next week"}, "expires_at"),
        ({"expires_at": "0001-01-01T00:00:00+14:00"}, "expires_at"),
        ({"expires_at": "9999-12-31T23:59:59.999999-14:00"}, "expires_at"),
        ({"webhook_secret": "short"}, "webhook_secret"),
        ({"colour": "blue"}, "colour"),
        ({"name": "has space"}, "name"),
    ],
)
async def test_admin_create_rejects_bad_fields(
    gw: Gateway, body: dict[str, Any], param: str
) -> None:
    """Each bad field is a 400 naming it, and no key is created."""
    response = await gw.client.post("/admin/keys", json={"name": "svc", **body}, headers=ADMIN)
    assert response.status_code == 400, response.text
    assert (_error(response)["type"], _error(response)["param"]) == ("invalid_request", param)
    assert await app_services(gw.app).store.keys.by_name("svc") is None


async def test_admin_create_duplicate_name_is_409(gw: Gateway) -> None:
    """A name already in use (even by the gateway's own key) is a 409 conflict."""
    await _create(gw)
    for name in ("svc", "app"):
        response = await gw.client.post("/admin/keys", json={"name": name}, headers=ADMIN)
        assert response.status_code == 409
        assert _error(response)["type"] == "conflict" and name in _error(response)["message"]


async def test_admin_create_accepts_a_chosen_webhook_secret(gw: Gateway) -> None:
    """A webhook_secret of 16+ characters is used as given instead of a minted one."""
    created = await _create(gw, webhook_secret="s" * 16)
    assert created["webhook_secret"] == "s" * 16


async def test_admin_patch_changes_and_clears_only_the_fields_sent(gw: Gateway) -> None:
    """PATCH sets the fields sent, null clears one, and the rest stay as they were."""
    await _create(gw, rpm=5, models=["haiku"])
    response = await gw.client.patch(
        "/admin/keys/svc", json={"rpd": 100, "rpm": None}, headers=ADMIN
    )
    assert response.status_code == 200
    policy = response.json()["policy"]
    assert (policy["rpm"], policy["rpd"], policy["models"]) == (None, 100, ["haiku"])
    fetched = (await gw.client.get("/admin/keys/svc", headers=ADMIN)).json()
    assert fetched["policy"] == policy


async def test_admin_patch_models_applies_to_the_next_request(gw: Gateway) -> None:
    """Narrowing a key's models refuses the very next request for another model with 403."""
    secret = (await _create(gw))["key"]
    await gw.client.patch("/admin/keys/svc", json={"models": ["haiku"]}, headers=ADMIN)
    refused = await gw.client.post(
        "/api/v1/run", json={"prompt": "x", "model": "sonnet"}, headers=gw.auth(secret)
    )
    assert refused.status_code == 403
    assert _error(refused)["type"] == "model_not_allowed"
    allowed = await gw.client.post(
        "/api/v1/run", json={"prompt": "x", "model": "haiku"}, headers=gw.auth(secret)
    )
    assert allowed.status_code == 200


async def test_admin_patch_rejects_bad_values_and_unknown_keys(gw: Gateway) -> None:
    """A bad value is 400 and changes nothing; an unknown or revoked key is 404."""
    await _create(gw, rpm=5)
    bad = await gw.client.patch("/admin/keys/svc", json={"rpm": -1}, headers=ADMIN)
    assert bad.status_code == 400 and _error(bad)["param"] == "rpm"
    svc = await app_services(gw.app).store.keys.by_name("svc")
    assert svc is not None and svc.policy.rpm == 5
    missing = await gw.client.patch("/admin/keys/ghost", json={"rpm": 1}, headers=ADMIN)
    assert missing.status_code == 404 and _error(missing)["type"] == "not_found"
    await gw.client.delete("/admin/keys/svc", headers=ADMIN)
    revoked = await gw.client.patch("/admin/keys/svc", json={"rpm": 1}, headers=ADMIN)
    assert revoked.status_code == 404


async def test_admin_delete_revokes_so_the_next_request_is_401(gw: Gateway) -> None:
    """DELETE revokes at once; deleting again, or an unknown key, is 404 (a NUL in the name
    is a 400 before any lookup)."""
    secret = (await _create(gw))["key"]
    assert (
        await gw.client.post("/api/v1/run", json={"prompt": "x"}, headers=gw.auth(secret))
    ).status_code == 200
    deleted = await gw.client.delete("/admin/keys/svc", headers=ADMIN)
    assert deleted.status_code == 200
    assert deleted.json()["active"] is False and deleted.json()["revoked_at"] is not None
    after = await gw.client.post("/api/v1/run", json={"prompt": "x"}, headers=gw.auth(secret))
    assert after.status_code == 401
    assert (await gw.client.delete("/admin/keys/svc", headers=ADMIN)).status_code == 404
    assert (await gw.client.get("/admin/keys/%00", headers=ADMIN)).status_code == 400


async def test_admin_expired_key_is_listed_as_expired_and_refused(gw: Gateway) -> None:
    """A key past its expires_at shows ``expired: true`` and its requests get 401."""
    secret = (await _create(gw, expires_at="2999-01-01"))["key"]
    store = app_services(gw.app).store
    await store.db.write(
        lambda conn: conn.execute(
            api_keys.update().where(api_keys.c.name == "svc").values(expires_at=sa.func.now())
        )
    )
    entry = (await gw.client.get("/admin/keys/svc", headers=ADMIN)).json()
    assert (entry["active"], entry["expired"]) == (True, True)
    response = await gw.client.post("/api/v1/run", json={"prompt": "x"}, headers=gw.auth(secret))
    assert response.status_code == 401


async def test_admin_audit_filters_by_key_and_status(gw: Gateway) -> None:
    """Rows come newest first and filter by key, HTTP status, job status and limit."""
    secret = (await _create(gw))["key"]
    await gw.run({"prompt": "one"})
    await gw.run({"prompt": ""})
    await gw.client.post("/api/v1/run", json={"prompt": "two"}, headers=gw.auth(secret))
    await app_services(gw.app).audit.flush()
    rows = (await gw.client.get("/admin/audit", headers=ADMIN)).json()["data"]
    assert [r["key_name"] for r in rows] == ["svc", "app", "app"]
    mine = (await gw.client.get("/admin/audit?key=app", headers=ADMIN)).json()["data"]
    assert [r["http_status"] for r in mine] == [400, 200]
    failed = (await gw.client.get("/admin/audit?status=400", headers=ADMIN)).json()["data"]
    assert [r["key_name"] for r in failed] == ["app"]
    done = (await gw.client.get("/admin/audit?status=completed", headers=ADMIN)).json()["data"]
    assert len(done) == 2
    newest = (await gw.client.get("/admin/audit?limit=1", headers=ADMIN)).json()["data"]
    assert newest[0]["key_name"] == "svc" and newest[0]["at"].endswith("+00:00")


async def test_admin_audit_shows_prompt_text_only_when_stored(
    gateway_factory: StartGateway, tmp_path: Path
) -> None:
    """By default rows carry no prompt_text at all; with CCGATE_AUDIT_PROMPTS they do."""
    plain = await gateway_factory(CCGATE_ADMIN_TOKEN=TOKEN)
    kept = await gateway_factory(
        CCGATE_ADMIN_TOKEN=TOKEN,
        CCGATE_AUDIT_PROMPTS="true",
        CCGATE_DATABASE_URL=f"sqlite:///{tmp_path / 'kept.db'}",
    )
    for gw in (plain, kept):
        await gw.run({"prompt": "secret plan"})
        await app_services(gw.app).audit.flush()
    [row] = (await plain.client.get("/admin/audit", headers=ADMIN)).json()["data"]
    assert "prompt_text" not in row and row["input_tokens"] == 5
    [row] = (await kept.client.get("/admin/audit", headers=ADMIN)).json()["data"]
    assert row["prompt_text"] == "secret plan"


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=many",
        "status=weird",
        "status=4000",
        "key=bad%20name",
        "door=smtp",
        "cursor=%25%25",
        "cursor=bm9wZQ",
        "cursor=" + "A" * 300,
        "cursor=MjAyNi0wMS0wMVQwMDowMDowMHwx",
        "cursor=MjAyNi0wMS0wMVQwMDowMDowMCswMDowMHwtMQ",
    ],
)
async def test_admin_audit_rejects_bad_parameters(gw: Gateway, query: str) -> None:
    """Out-of-range limits, unknown statuses, doors and malformed key names or cursors
    (garbage, no time zone, a negative id) are 400s."""
    response = await gw.client.get(f"/admin/audit?{query}", headers=ADMIN)
    assert response.status_code == 400
    assert _error(response)["type"] == "invalid_request"


def _seeded_rows(count: int) -> list[AuditEntry]:
    """``count`` rows over five keys, every door, a few statuses; seven share each second,
    and they are written out of time order, so ids alone do not give the order."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        AuditEntry(
            at=start + timedelta(seconds=n // 7),
            request_id=f"req_{n}",
            door=DOORS[n % len(DOORS)],
            route="/api/v1/run",
            http_status=(200, 429, 200, 400)[n % 4],
            duration_ms=1,
            key_name=f"k{n % 5}",
            job_status="failed" if n % 6 == 0 else None,
        )
        for n in range(count)
    ]
    # 7919 is prime, so this visits every row once, out of time order.
    return [rows[(n * 7919) % count] for n in range(count)]


async def _all_pages(gw: Gateway, query: str) -> tuple[list[int], int]:
    """Follow ``next_cursor`` from the first page to the last: the ids seen and the pages."""
    ids: list[int] = []
    cursor: str | None = None
    for pages in range(1, 1000):
        url = f"/admin/audit?{query}" + (f"&cursor={cursor}" if cursor else "")
        response = await gw.client.get(url, headers=ADMIN)
        assert response.status_code == 200, response.text
        ids += [row["id"] for row in response.json()["data"]]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return ids, pages
    raise AssertionError("next_cursor never ran out")


async def test_admin_audit_pages_through_every_row_once(db_gateway_factory: StartGateway) -> None:
    """Following next_cursor walks thousands of rows newest first (by time, then id), with
    and without filters, each row exactly once and none missing, on SQLite and PostgreSQL."""
    gw = await db_gateway_factory(CCGATE_ADMIN_TOKEN=TOKEN)
    for start in range(0, 3000, 500):
        assert (
            await app_services(gw.app).store.audit.append_many(
                _seeded_rows(3000)[start : start + 500]
            )
            == []
        )
    stored = await app_services(gw.app).store.db.read(
        lambda conn: conn.execute(
            sa.select(
                audit_log.c.id,
                audit_log.c.at,
                audit_log.c.key_name,
                audit_log.c.http_status,
                audit_log.c.door,
            )
        ).all()
    )
    newest_first = sorted(stored, key=lambda r: (r.at, r.id), reverse=True)
    ids, pages = await _all_pages(gw, "limit=250")
    assert ids == [r.id for r in newest_first] and pages == 12
    ids, _ = await _all_pages(gw, "limit=7&key=k2&status=429&door=openai")
    assert ids == [
        r.id for r in newest_first if (r.key_name, r.http_status, r.door) == ("k2", 429, "openai")
    ]
    assert len(ids) > 20


async def test_admin_audit_filters_by_door(gw: Gateway) -> None:
    """door= keeps only that door's rows; the last page says there is no next one."""
    await gw.run({"prompt": "native"})
    await gw.client.post(
        "/v1/messages",
        headers=gw.auth(),
        json={"model": "sonnet", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
    )
    await app_services(gw.app).audit.flush()
    body = (await gw.client.get("/admin/audit?door=anthropic", headers=ADMIN)).json()
    assert [(r["door"], r["route"]) for r in body["data"]] == [("anthropic", "/v1/messages")]
    assert body["next_cursor"] is None


async def test_admin_rotates_a_webhook_secret_once(gw: Gateway) -> None:
    """POST /admin/keys/{name}/webhook-secret shows a new secret once and stores it; unknown
    or revoked keys are 404."""
    first = (await _create(gw))["webhook_secret"]
    response = await gw.client.post("/admin/keys/svc/webhook-secret", headers=ADMIN)
    assert response.status_code == 200
    secret = response.json()["webhook_secret"]
    assert secret.startswith("whsec_") and secret != first
    assert response.json() == {"name": "svc", "webhook_secret": secret}
    stored = await app_services(gw.app).store.db.read(
        lambda conn: conn.execute(
            sa.select(api_keys.c.webhook_secret).where(api_keys.c.name == "svc")
        ).scalar()
    )
    assert stored == secret
    assert secret not in (await gw.client.get("/admin/keys/svc", headers=ADMIN)).text
    await gw.client.delete("/admin/keys/svc", headers=ADMIN)
    for name in ("svc", "nobody", "bad%20name"):
        gone = await gw.client.post(f"/admin/keys/{name}/webhook-secret", headers=ADMIN)
        assert gone.status_code == 404 and _error(gone)["type"] == "not_found"


async def test_admin_status_reports_readiness_queue_and_circuit(
    gateway_factory: StartGateway, tmp_path: Path
) -> None:
    """GET /admin/status shows readiness (the CLI and its version), running and queued jobs,
    the breaker and no pool when the pool is off; it needs the admin token."""
    runner = FakeRunner(block=True)
    claude = make_fake_claude(tmp_path / "bin", "text")
    gw = await gateway_factory(
        runner, CCGATE_ADMIN_TOKEN=TOKEN, CCGATE_CONCURRENCY=1, CCGATE_CLAUDE_PATH=str(claude)
    )
    assert (await gw.client.get("/admin/status")).status_code == 401
    for prompt in ("busy", "waiting"):
        await gw.client.post("/api/v1/jobs", json={"prompt": prompt}, headers=gw.auth())
    while runner.running == 0:
        await asyncio.sleep(0.01)
    app_services(gw.app).backend.breaker = None
    status = (await gw.client.get("/admin/status", headers=ADMIN)).json()
    runner.released.set()
    assert (status["status"], status["store"], status["backend"]) == ("ready", "ok", "cli")
    assert status["claude"]["path"] == str(claude) and status["claude"]["version"]
    assert status["queue"] == {
        "accepting": True,
        "running_here": 1,
        "concurrency": 1,
        "queue_size": 100,
        "queued": 1,
        "processing": 1,
    }
    assert status["circuit"] == {"backend": "cli", "enabled": False}
    assert status["pool"] is None and status["problems"] == []


async def test_admin_status_shows_the_warm_pool_shape(
    gateway_factory: StartGateway, tmp_path: Path
) -> None:
    """With the warm pool on, the status holds the pool's mode, shape and counters."""
    executable = make_fake_claude(tmp_path / "bin", "text")
    options = CliOptions(
        executable=str(executable), work_dir=str(tmp_path), base_env={"HOME": str(tmp_path)}
    )
    runner = PooledCliRunner(options, PoolConfig(mode="fresh", max_processes=3))
    try:
        gw = await gateway_factory(
            runner,
            CCGATE_ADMIN_TOKEN=TOKEN,
            CCGATE_POOL_MODE="fresh",
            CCGATE_POOL_MAX_PROCESSES="3",
        )
        pool = (await gw.client.get("/admin/status", headers=ADMIN)).json()["pool"]
    finally:
        await runner.aclose()
    assert (pool["mode"], pool["max_processes"], pool["busy"]) == ("fresh", 3, 0)
    assert {"idle", "starting", "keys", "min_idle"} <= set(pool)


async def test_admin_circuit_is_disabled_on_the_cli_backend(gw: Gateway) -> None:
    """Without a breaker the circuit routes say so, and reset is a harmless no-op."""
    app_services(gw.app).backend.breaker = None
    expected = {"backend": "cli", "enabled": False}
    assert (await gw.client.get("/admin/circuit", headers=ADMIN)).json() == expected
    reset = await gw.client.post("/admin/circuit/reset", headers=ADMIN)
    assert reset.status_code == 200 and reset.json() == expected


async def test_admin_circuit_reports_and_resets_the_breaker(gw: Gateway) -> None:
    """An open breaker shows as open with its failures; reset closes it."""
    breaker = CircuitBreaker(failures=2, cooldown_secs=30)
    app_services(gw.app).backend.breaker = breaker
    breaker.record_failure()
    breaker.record_failure()
    state = (await gw.client.get("/admin/circuit", headers=ADMIN)).json()
    assert (state["enabled"], state["state"], state["consecutive_failures"]) == (True, "open", 2)
    assert state["retry_after_secs"] > 0
    reset = (await gw.client.post("/admin/circuit/reset", headers=ADMIN)).json()
    assert (reset["state"], reset["consecutive_failures"]) == ("closed", 0)
    breaker.before_call()


async def test_admin_window_share_outside_its_range_is_refused(gw: Gateway) -> None:
    """A window_share of 0 or above 1 is a 400 naming the field; nothing is created."""
    for share in (0, 1.5):
        response = await gw.client.post(
            "/admin/keys", json={"name": "svc", "window_share": share}, headers=ADMIN
        )
        assert response.status_code == 400
        assert "window_share" in response.text
