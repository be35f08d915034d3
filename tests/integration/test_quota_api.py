"""The quota doors and a closed plan window at the synchronous and asynchronous doors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from ccgate.api.deps import app_services
from ccgate.clock import utcnow
from ccgate.jobs import JobService
from ccgate.runners.plan_windows import PlanWindow
from tests.integration.conftest import Gateway

TOKEN = "admin-token-for-quota-tests-0123456789"


async def _close_window(gw: Gateway, secs: int = 900) -> None:
    jobs: JobService = app_services(gw.app).jobs
    now = utcnow()
    await jobs.plan.observe(
        [PlanWindow("five_hour", "rejected", 1.0, now + timedelta(seconds=secs), now)], None
    )


async def test_quota_shows_each_window_as_last_seen(gateway_factory: Callable[..., Any]) -> None:
    """GET /api/v1/quota (any key) and /admin/quota (admin token) list each window's status,
    utilization, reset and when it was seen."""
    gw: Gateway = await gateway_factory(CCGATE_ADMIN_TOKEN=TOKEN)
    assert (await gw.client.get("/api/v1/quota", headers=gw.auth())).json()["windows"] == []
    await _close_window(gw)
    mine = (await gw.client.get("/api/v1/quota", headers=gw.auth())).json()
    [window] = mine["windows"]
    assert window["window"] == "five_hour" and window["status"] == "rejected"
    assert window["utilization"] == 1.0 and window["resets_at"] and window["seen_at"]
    assert mine["closed_until"] == window["resets_at"]
    admin = await gw.client.get("/admin/quota", headers={"Authorization": f"Bearer {TOKEN}"})
    assert admin.status_code == 200 and admin.json()["windows"][0]["window"] == "five_hour"
    assert (await gw.client.get("/admin/quota", headers=gw.auth())).status_code in (401, 403)


async def test_quota_closed_window_sync_run_is_429_with_retry_after(gateway: Gateway) -> None:
    """A synchronous run while the plan window is closed answers 429 upstream_rate_limited
    with Retry-After counting down to the reset."""
    await _close_window(gateway, 900)
    response = await gateway.run({"prompt": "hi"})
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "upstream_rate_limited"
    assert 890 <= int(response.headers["Retry-After"]) <= 900


async def test_quota_closed_window_async_job_waits_with_retry_at(gateway: Gateway) -> None:
    """An async job submitted while the window is closed is accepted and stays queued,
    showing retry_at at the reset."""
    await _close_window(gateway, 900)
    response = await gateway.client.post(
        "/api/v1/jobs", json={"prompt": "hi"}, headers=gateway.auth()
    )
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "queued" and job["retry_at"] is not None
