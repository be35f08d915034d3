"""GET /metrics in-process: the families move as requests flow, and who may read them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ccgate.api.deps import app_services
from ccgate.clock import utcnow
from ccgate.policy import KeyPolicy
from ccgate.runners.plan_windows import PlanWindow
from tests.integration.conftest import Gateway
from tests.support.fake_runner import FakeRunner

METRICS_TOKEN = "metrics-token-0123456789abcdef0123456789"


async def _scrape(gateway: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (sample name, sorted labels)."""
    response = await gateway.client.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_run_moves_request_job_token_and_latency_families(gateway: Gateway) -> None:
    """A completed run counts a 200 on the native door, observes duration, overhead, queue
    wait and time to first token, counts the job as completed, and its tokens and cost."""
    before = await _scrape(gateway)
    response = await gateway.run({"prompt": "hi", "model": "sonnet"})
    assert response.status_code == 200, response.text
    after = await _scrape(gateway)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("ccgate_http_requests_total", door="native", status="200", error_type="none") == 1
    assert grew("ccgate_http_request_duration_seconds_count", door="native") == 1
    assert grew("ccgate_gateway_overhead_seconds_count", door="native", backend="cli") == 1
    assert grew("ccgate_queue_wait_seconds_count", door="native") == 1
    assert (
        grew(
            "ccgate_time_to_first_token_seconds_count", door="native", backend="cli", model="sonnet"
        )
        == 1
    )
    assert grew("ccgate_jobs_finished_total", status="completed") == 1
    assert grew("ccgate_tokens_total", model="sonnet", key="app", kind="input") == 5
    assert grew("ccgate_tokens_total", model="sonnet", key="app", kind="output") == 7
    assert abs(grew("ccgate_cost_usd_total", model="sonnet", key="app") - 0.001) < 1e-9


async def test_metrics_overhead_leaves_out_the_runner_time(
    gateway_factory: Callable[..., Any],
) -> None:
    """A run whose runner takes ~0.3 s has a request duration past 0.3 s but a gateway
    overhead well under it: time inside the runner is not ccgate's."""
    gateway: Gateway = await gateway_factory(FakeRunner(reply="x" * 30, delay=0.03))
    before = await _scrape(gateway)
    assert (await gateway.run({"prompt": "hi"})).status_code == 200
    after = await _scrape(gateway)
    duration = _value(after, "ccgate_http_request_duration_seconds_sum", door="native") - _value(
        before, "ccgate_http_request_duration_seconds_sum", door="native"
    )
    overhead = _value(
        after, "ccgate_gateway_overhead_seconds_sum", door="native", backend="cli"
    ) - _value(before, "ccgate_gateway_overhead_seconds_sum", door="native", backend="cli")
    assert duration >= 0.3
    assert overhead < 0.15


async def test_metrics_error_type_and_model_label_stay_bounded(gateway: Gateway) -> None:
    """A bad key counts as 401 authentication_error; a model matched only by a wildcard is
    labelled ``other``, never with the client's string."""
    before = await _scrape(gateway)
    bad = await gateway.client.post(
        "/api/v1/run", json={"prompt": "hi"}, headers=gateway.auth("ccg_wrong")
    )
    assert bad.status_code == 401
    assert (await gateway.run({"prompt": "hi", "model": "claude-made-up-123"})).status_code == 200
    after = await _scrape(gateway)
    labels = {"door": "native", "status": "401", "error_type": "authentication_error"}
    assert (
        _value(after, "ccgate_http_requests_total", **labels)
        - _value(before, "ccgate_http_requests_total", **labels)
    ) == 1
    assert not any("claude-made-up-123" in dict(lbls).values() for _, lbls in after)
    assert _value(after, "ccgate_tokens_total", model="other", key="app", kind="input") >= 5


async def test_metrics_limit_refusal_counts_by_limit(gateway: Gateway) -> None:
    """A key over its requests-per-minute limit gets 429 and the refusal is counted."""
    created = await app_services(gateway.app).keyring.create("limited", KeyPolicy(rpm=1))
    headers = {"Authorization": f"Bearer {created.secret}"}
    before = await _scrape(gateway)
    statuses = [
        (
            await gateway.client.post("/api/v1/run", json={"prompt": "hi"}, headers=headers)
        ).status_code
        for _ in range(2)
    ]
    after = await _scrape(gateway)
    assert statuses == [200, 429]
    assert (
        _value(after, "ccgate_limit_refusals_total", limit="rpm_exceeded")
        - _value(before, "ccgate_limit_refusals_total", limit="rpm_exceeded")
    ) == 1


async def test_metrics_sse_subscribers_gauge_follows_open_streams(
    gateway_factory: Callable[..., Any],
) -> None:
    """While a job's SSE stream is open the subscribers gauge is one higher and the run is
    in progress; once the job ends and the stream closes, both drop back."""
    runner = FakeRunner(block=True)
    gateway: Gateway = await gateway_factory(runner)
    job_id = (
        await gateway.client.post("/api/v1/jobs", json={"prompt": "hi"}, headers=gateway.auth())
    ).json()["job_id"]
    base = _value(await _scrape(gateway), "ccgate_sse_subscribers")
    stream = asyncio.create_task(
        gateway.client.get(f"/api/v1/jobs/{job_id}/sse", headers=gateway.auth())
    )
    try:
        deadline = time.monotonic() + 5
        while _value(await _scrape(gateway), "ccgate_sse_subscribers") != base + 1:
            assert time.monotonic() < deadline, "the open stream was never counted"
            await asyncio.sleep(0.02)
        assert _value(await _scrape(gateway), "ccgate_runs_in_progress", backend="cli") >= 1
    finally:
        runner.released.set()
    assert (await stream).status_code == 200
    assert _value(await _scrape(gateway), "ccgate_sse_subscribers") == base


async def test_metrics_refused_to_other_addresses_without_token(
    gateway_factory: Callable[..., Any],
) -> None:
    """From a non-loopback address /metrics is 403 in the error shape; the right bearer
    token opens it, a wrong one does not, and CCGATE_METRICS_ALLOW_CIDRS admits its nets."""
    gateway: Gateway = await gateway_factory(
        CCGATE_METRICS_TOKEN=METRICS_TOKEN, CCGATE_METRICS_ALLOW_CIDRS="198.51.100.0/24"
    )

    async def get(client_ip: str, token: str | None = None) -> httpx.Response:
        transport = httpx.ASGITransport(app=gateway.app, client=(client_ip, 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return await client.get("/metrics", headers=headers)

    refused = await get("203.0.113.9")
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "forbidden"
    assert (await get("203.0.113.9", "wrong-token")).status_code == 403
    assert (await get("203.0.113.9", METRICS_TOKEN)).status_code == 200
    assert (await get("198.51.100.7")).status_code == 200


async def test_metrics_plan_windows_show_as_gauges(gateway: Gateway) -> None:
    """A plan window the CLI reported shows its utilization, whether it is closed and when it
    resets, as /api/v1/quota does."""
    now = utcnow()
    resets = now + timedelta(minutes=15)
    await app_services(gateway.app).jobs.plan.observe(
        [
            PlanWindow("five_hour", "rejected", 0.97, resets, now),
            PlanWindow("seven_day", "allowed", 0.4, now + timedelta(days=3), now),
        ],
        None,
    )
    samples = await _scrape(gateway)
    assert _value(samples, "ccgate_plan_window_utilization", window="five_hour") == 0.97
    assert _value(samples, "ccgate_plan_window_closed", window="five_hour") == 1
    assert _value(samples, "ccgate_plan_window_closed", window="seven_day") == 0
    assert (
        _value(samples, "ccgate_plan_window_resets_at_seconds", window="five_hour")
        == resets.timestamp()
    )
