"""Each key rule holds at every door: native, Anthropic and OpenAI, with the door's headers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from ccgate.api.deps import app_services
from ccgate.policy import KeyPolicy
from tests.support.fake_runner import FakeRunner

DOORS: dict[str, tuple[str, dict[str, Any]]] = {
    "native": ("/api/v1/run", {"prompt": "hi"}),
    "anthropic": (
        "/v1/messages",
        {"model": "sonnet", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
    ),
    "openai": (
        "/v1/chat/completions",
        {"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]},
    ),
}


async def _key(gateway: Any, name: str, **policy: Any) -> dict[str, str]:
    created = await app_services(gateway.app).keyring.create(name, KeyPolicy(**policy))
    return {"Authorization": f"Bearer {created.secret}"}


@pytest.mark.parametrize("door", sorted(DOORS))
async def test_limits_rpm_429_at_every_door_with_its_headers(
    gateway_factory: Callable[..., Any], door: str
) -> None:
    """The (rpm+1)th request is a 429 naming the limit, with Retry-After and door headers."""
    gateway = await gateway_factory()
    auth = await _key(gateway, "capped", rpm=2)
    path, body = DOORS[door]
    first = await gateway.client.post(path, json=body, headers=auth)
    second = await gateway.client.post(path, json=body, headers=auth)
    third = await gateway.client.post(path, json=body, headers=auth)
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert 1 <= int(third.headers["retry-after"]) <= 60
    if door == "anthropic":
        assert first.headers["anthropic-ratelimit-requests-remaining"] == "1"
        assert third.headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert third.json()["error"]["type"] == "rate_limit_error"
        assert "x-ratelimit-limit-requests" not in third.headers
    else:
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert third.headers["x-ratelimit-limit-requests"] == "2"
    if door == "native":
        assert third.json()["error"]["type"] == "rpm_exceeded"
    if door == "openai":
        assert third.json()["error"]["code"] == "rpm_exceeded"


async def test_limits_shared_by_all_doors(gateway_factory: Callable[..., Any]) -> None:
    """One key's requests count against one budget whichever door they use."""
    gateway = await gateway_factory()
    auth = await _key(gateway, "shared", rpm=3)
    statuses = [
        (await gateway.client.post(path, json=body, headers=auth)).status_code
        for path, body in (DOORS["native"], DOORS["anthropic"], DOORS["openai"], DOORS["native"])
    ]
    assert statuses == [200, 200, 200, 429]


async def test_limits_validation_failures_spend_nothing(
    gateway_factory: Callable[..., Any],
) -> None:
    """Requests refused as invalid (400) do not use up the key's requests."""
    gateway = await gateway_factory()
    auth = await _key(gateway, "careful", rpm=1)
    for path, bad in (
        ("/api/v1/run", {"prompt": ""}),
        ("/v1/messages", {"model": "sonnet", "messages": []}),
        ("/v1/chat/completions", {"model": "nope!", "messages": []}),
    ):
        assert (await gateway.client.post(path, json=bad, headers=auth)).status_code == 400
    ok = await gateway.client.post("/api/v1/run", json={"prompt": "hi"}, headers=auth)
    assert ok.status_code == 200


async def test_limits_concurrency_counts_running_jobs(gateway_factory: Callable[..., Any]) -> None:
    """With concurrency=1, a second request while one runs is 429; after it ends, fine."""
    runner = FakeRunner(block=True)
    gateway = await gateway_factory(runner)
    auth = await _key(gateway, "single", concurrency=1)
    first = asyncio.create_task(
        gateway.client.post("/api/v1/run", json={"prompt": "a"}, headers=auth)
    )
    while not runner.started:
        await asyncio.sleep(0.01)
    second = await gateway.client.post(
        "/v1/chat/completions", json=DOORS["openai"][1], headers=auth
    )
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "concurrency_exceeded"
    runner.released.set()
    assert (await first).status_code == 200
    runner.block = False
    third = await gateway.client.post("/api/v1/run", json={"prompt": "b"}, headers=auth)
    assert third.status_code == 200


async def test_limits_tokens_per_day_refuses_after_usage(
    gateway_factory: Callable[..., Any],
) -> None:
    """Once a run's tokens reach tokens_per_day, the next request is 429 at any door."""
    gateway = await gateway_factory()
    auth = await _key(gateway, "frugal", tokens_per_day=10)  # each fake run uses 12
    assert (
        await gateway.client.post("/api/v1/run", json={"prompt": "a"}, headers=auth)
    ).status_code == 200
    refused = await gateway.client.post("/v1/messages", json=DOORS["anthropic"][1], headers=auth)
    assert refused.status_code == 429
    assert "tokens" in refused.json()["error"]["message"]


async def test_limits_async_jobs_hold_their_slot_until_they_end(
    gateway_factory: Callable[..., Any],
) -> None:
    """A queued job keeps its concurrency slot after the 202 until it finishes."""
    runner = FakeRunner(block=True)
    gateway = await gateway_factory(runner)
    auth = await _key(gateway, "async", concurrency=1)
    job = (await gateway.client.post("/api/v1/jobs", json={"prompt": "a"}, headers=auth)).json()
    busy = await gateway.client.post("/api/v1/jobs", json={"prompt": "b"}, headers=auth)
    assert busy.status_code == 429
    runner.released.set()
    await app_services(gateway.app).jobs.wait(job["job_id"])
    for _ in range(100):
        again = await gateway.client.post("/api/v1/jobs", json={"prompt": "c"}, headers=auth)
        if again.status_code == 202:
            break
        await asyncio.sleep(0.02)
    assert again.status_code == 202


@pytest.mark.parametrize("door", sorted(DOORS))
async def test_limits_key_model_allowlist_at_every_door(
    gateway_factory: Callable[..., Any], door: str
) -> None:
    """A key limited to haiku is refused sonnet (403) at every door."""
    gateway = await gateway_factory()
    auth = await _key(gateway, "haiku-only", models=("haiku",))
    path, body = DOORS[door]
    response = await gateway.client.post(path, json={**body, "model": "sonnet"}, headers=auth)
    assert response.status_code == 403


async def test_limits_dropped_stream_frees_the_slot_and_cancels_the_job(
    gateway_factory: Callable[..., Any],
) -> None:
    """A client gone before its stream's body starts still gets its job cancelled and its
    concurrency slot back."""
    runner = FakeRunner(reply="x" * 300, delay=0.05)
    gateway = await gateway_factory(runner)
    auth = await _key(gateway, "dropper", concurrency=1)
    body = json.dumps({**DOORS["anthropic"][1], "stream": True}).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        return None

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/messages",
        "raw_path": b"",
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "http_version": "1.1",
        "server": ("ccgate.test", 80),
        "client": ("127.0.0.1", 5000),
        "headers": [
            (b"authorization", auth["Authorization"].encode()),
            (b"content-type", b"application/json"),
        ],
    }
    await gateway.app(scope, receive, send)
    assert runner.cancelled == 1
    again = await gateway.client.post("/api/v1/run", json={"prompt": "next"}, headers=auth)
    assert again.status_code == 200
