"""Budgets hold under concurrency through the app: requests sent at once cannot overspend a
key's budget, on the CLI backend's queue and on the API backend's pass-through."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ccgate.api.deps import app_services
from ccgate.policy import KeyPolicy
from ccgate.pricing import cost_usd
from tests.integration.conftest import Gateway
from tests.support.fake_anthropic import Error, FakeAnthropic, Text
from tests.support.fake_runner import FakeRunner


async def _budget_key(gateway: Gateway, budget: float) -> tuple[str, dict[str, str]]:
    created = await app_services(gateway.app).keyring.create(
        "capped", KeyPolicy(budget_usd_per_month=budget)
    )
    return created.record.id, {"Authorization": f"Bearer {created.secret}"}


async def test_limits_concurrent_native_runs_cannot_overspend_the_budget(
    gateway_factory: Callable[..., Any],
) -> None:
    """Eight runs at once against a budget that covers two estimates (sonnet, ~4,096 output
    tokens each): two run, six get 429 budget_exceeded, and only the two real costs count."""
    runner = FakeRunner(block=True)
    gateway = await gateway_factory(runner, CCGATE_CONCURRENCY=8)
    key_id, auth = await _budget_key(gateway, 0.13)
    calls = [
        asyncio.create_task(gateway.client.post("/api/v1/run", json={"prompt": "hi"}, headers=auth))
        for _ in range(8)
    ]
    async with asyncio.timeout(10):
        while runner.running < 2 or sum(c.done() for c in calls) < 6:
            await asyncio.sleep(0.01)
    runner.released.set()
    responses = await asyncio.gather(*calls)
    assert sorted(r.status_code for r in responses) == [200] * 2 + [429] * 6
    assert {r.json()["error"]["type"] for r in responses if r.status_code == 429} == {
        "budget_exceeded"
    }
    used = await app_services(gateway.app).limiter.usage(key_id)
    assert used == {"tokens_today": 24, "cost_usd_this_month": 0.002, "running": 0}


async def test_limits_cli_backend_small_max_tokens_does_not_shrink_the_reservation(
    gateway_factory: Callable[..., Any],
) -> None:
    """The CLI ignores max_tokens, so eight /v1/messages at once with max_tokens=1 still
    reserve a default-sized answer each: against a budget of two such estimates, two run."""
    runner = FakeRunner(block=True)
    gateway = await gateway_factory(runner, CCGATE_CONCURRENCY=8)
    _, auth = await _budget_key(gateway, 0.13)
    body = {"model": "sonnet", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    calls = [
        asyncio.create_task(gateway.client.post("/v1/messages", json=body, headers=auth))
        for _ in range(8)
    ]
    async with asyncio.timeout(10):
        while runner.running < 2 or sum(c.done() for c in calls) < 6:
            await asyncio.sleep(0.01)
    runner.released.set()
    responses = await asyncio.gather(*calls)
    assert sorted(r.status_code for r in responses) == [200] * 2 + [429] * 6
    assert runner.peak_running == 2


async def test_limits_concurrent_pass_through_messages_cannot_overspend_the_budget(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """On the API backend, eight /v1/messages at once with max_tokens=100 against a budget
    that covers two of them: two reach upstream, and the key is charged their real cost."""
    fake.default = Text("ok", delay=0.3)
    key_id, auth = await _budget_key(api_gateway, 0.0037)  # 2 x (3 x 1 + 15 x 100) micro-USD
    body = {"model": "sonnet", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    responses = await asyncio.gather(
        *(api_gateway.client.post("/v1/messages", json=body, headers=auth) for _ in range(8))
    )
    assert sorted(r.status_code for r in responses) == [200] * 2 + [429] * 6
    assert len(fake.message_requests()) == 2
    real = sum(
        cost_usd(r.json()["model"], r.json()["usage"]) or 0
        for r in responses
        if r.status_code == 200
    )
    used = await app_services(api_gateway.app).limiter.usage(key_id)
    assert abs(used["cost_usd_this_month"] - real) < 1e-6 and used["running"] == 0


async def test_limits_failed_run_gives_its_reservation_back(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """A request that fails upstream spends nothing and frees its reservation: the next
    request that fits the budget is admitted."""
    fake.reply(Error(500, "api_error", "boom"))
    _, auth = await _budget_key(api_gateway, 0.002)  # one estimate of 1,503 micro-USD
    body = {"model": "sonnet", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    failed = await api_gateway.client.post("/v1/messages", json=body, headers=auth)
    assert failed.status_code >= 500
    fake.default = Text("ok", delay=0.3)
    first, second = await asyncio.gather(
        *(api_gateway.client.post("/v1/messages", json=body, headers=auth) for _ in range(2))
    )
    assert sorted([first.status_code, second.status_code]) == [200, 429]
