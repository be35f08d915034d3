"""The API backend's pass-through and count_tokens obey the same rules as every door: the
prompt-size limit, a truthful audit row, and admission under the key's limits."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from ccgate.api.app import create_app
from ccgate.api.deps import app_services
from ccgate.config import Settings
from ccgate.policy import KeyPolicy
from tests.integration.conftest import Gateway
from tests.support.fake_anthropic import FAKE_API_KEY, FakeAnthropic

COUNT = "/v1/messages/count_tokens"
HELLO = {
    "model": "sonnet",
    "max_tokens": 16,
    "system": "be brief",
    "messages": [{"role": "user", "content": "hello"}],
}


@contextlib.asynccontextmanager
async def _api_gateway(
    make_settings: Callable[..., Settings], fake: FakeAnthropic, **env: Any
) -> AsyncIterator[Gateway]:
    app = create_app(
        make_settings(
            CCGATE_BACKEND="api", ANTHROPIC_BASE_URL=fake.url, ANTHROPIC_API_KEY=FAKE_API_KEY, **env
        )
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ccgate.test"
        ) as client,
    ):
        yield Gateway(app, client, (await app_services(app).keyring.create("app")).secret)


async def _key(gateway: Gateway, **policy: Any) -> dict[str, str]:
    created = await app_services(gateway.app).keyring.create("limited", KeyPolicy(**policy))
    return gateway.auth(created.secret)


def _count_requests(fake: FakeAnthropic) -> int:
    return sum(1 for r in fake.requests if r.path.startswith(COUNT))


async def test_api_pass_through_refuses_a_prompt_over_the_limit(
    make_settings: Callable[..., Settings], fake: FakeAnthropic
) -> None:
    """A pass-through conversation over CCGATE_MAX_PROMPT_BYTES is a 413 in Anthropic's
    shape, and nothing reaches upstream (tool results and citations count as text too)."""
    async with _api_gateway(make_settings, fake, CCGATE_MAX_PROMPT_BYTES=1000) as gateway:
        big_result = {
            "model": "sonnet",
            "max_tokens": 16,
            "messages": [
                {"role": "user", "content": "use the tool"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "x" * 2000}
                    ],
                },
            ],
        }
        cited = {
            **HELLO,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "hi",
                            "citations": [{"type": "char_location", "cited_text": "z" * 2000}],
                        }
                    ],
                }
            ],
        }
        for body in (
            {**HELLO, "messages": [{"role": "user", "content": "y" * 2000}]},
            big_result,
            cited,
        ):
            response = await gateway.client.post("/v1/messages", json=body, headers=gateway.auth())
            assert response.status_code == 413
            assert response.json()["error"]["type"] == "request_too_large"
            assert "CCGATE_MAX_PROMPT_BYTES" in response.json()["error"]["message"]
        assert fake.message_requests() == []


async def test_api_pass_through_audits_the_real_prompt_bytes(api_gateway: Gateway) -> None:
    """The audit row of a pass-through request holds the size of its text (system and
    turns), not 0."""
    response = await api_gateway.client.post("/v1/messages", json=HELLO, headers=api_gateway.auth())
    assert response.status_code == 200
    await app_services(api_gateway.app).audit.flush()
    [row] = await app_services(api_gateway.app).store.audit.recent(1)
    assert row["prompt_bytes"] == len("be brief") + len("hello")


async def test_api_count_tokens_counts_against_the_keys_request_limits(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """count_tokens on the API backend is admitted like a message: rpm counts it, the 429
    comes before any upstream call, and the answer carries the rate headers."""
    auth = await _key(api_gateway, rpm=1)
    first = await api_gateway.client.post(COUNT, json=HELLO, headers=auth)
    second = await api_gateway.client.post(COUNT, json=HELLO, headers=auth)
    assert (first.status_code, second.status_code) == (200, 429)
    assert first.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert second.json()["error"]["type"] == "rate_limit_error"
    assert _count_requests(fake) == 1


async def test_api_count_tokens_spends_no_budget_and_keeps_model_rules(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """count_tokens costs nothing: a key whose budget is spent may still count, and nothing
    is added to its spend; a model the key may not use is still 403."""
    auth = await _key(api_gateway, budget_usd_per_month=0.01, models=["sonnet"])
    limiter = app_services(api_gateway.app).limiter
    key = await app_services(api_gateway.app).store.keys.by_name("limited")
    assert key is not None
    await limiter.record_usage(key.id, key.policy, tokens=100, cost_usd=0.02)
    refused = await api_gateway.client.post("/v1/messages", json=HELLO, headers=auth)
    assert refused.json()["error"]["type"] == "rate_limit_error"
    counted = await api_gateway.client.post(COUNT, json=HELLO, headers=auth)
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0
    assert (await limiter.usage(key.id))["cost_usd_this_month"] == 0.02
    other_model = await api_gateway.client.post(
        COUNT, json={**HELLO, "model": "haiku"}, headers=auth
    )
    assert other_model.status_code == 403 and _count_requests(fake) == 1


async def test_cli_count_tokens_estimate_counts_against_the_keys_request_limits(
    gateway: Gateway,
) -> None:
    """On the CLI backend the count_tokens estimate is admitted the same way: rpm counts."""
    auth = await _key(gateway, rpm=1)
    first = await gateway.client.post(COUNT, json=HELLO, headers=auth)
    second = await gateway.client.post(COUNT, json=HELLO, headers=auth)
    assert (first.status_code, second.status_code) == (200, 429)
