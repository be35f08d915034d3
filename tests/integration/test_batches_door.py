"""The Message Batches door through the official anthropic SDK, in process, on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from anthropic.types.messages.batch_create_params import Request as BatchRequest

from ccgate.api.app import create_app
from ccgate.api.deps import app_services
from ccgate.config import Settings
from ccgate.policy import KeyPolicy
from ccgate.runners.base import RunError, RunEvent, RunRequest
from tests.integration.conftest import Gateway
from tests.support.fake_anthropic import FAKE_API_KEY, Error, FakeAnthropic, Text
from tests.support.fake_runner import FakeRunner


def _sdk(gateway: Any, key: str | None = None) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key=key or gateway.key,
        base_url="http://ccgate.test",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gateway.app)),
    )


def _request(custom_id: str, prompt: str, **extra: Any) -> BatchRequest:
    params: Any = {
        "model": "sonnet",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": prompt}],
        **extra,
    }
    return {"custom_id": custom_id, "params": params}


def _requests(n: int, prefix: str = "r") -> list[BatchRequest]:
    return [_request(f"{prefix}{i}", f"q{i}") for i in range(n)]


async def _key(gateway: Any, name: str, **policy: Any) -> str:
    return (await app_services(gateway.app).keyring.create(name, KeyPolicy(**policy))).secret


async def _ended(client: anthropic.AsyncAnthropic, batch_id: str) -> MessageBatch:
    async with asyncio.timeout(20):
        while (batch := await client.messages.batches.retrieve(batch_id)).processing_status != (
            "ended"
        ):
            await asyncio.sleep(0.05)
    return batch


async def _results(
    client: anthropic.AsyncAnthropic, batch_id: str
) -> dict[str, MessageBatchIndividualResponse]:
    return {r.custom_id: r async for r in await client.messages.batches.results(batch_id)}


@dataclass
class PickyRunner:
    """A FakeRunner that fails every prompt containing "fail" (and counts each prompt)."""

    inner: FakeRunner = field(default_factory=FakeRunner)
    prompts: list[str] = field(default_factory=list)

    async def run(self, request: RunRequest) -> AsyncGenerator[RunEvent, None]:
        """Fail "fail" prompts with an upstream error; otherwise the FakeRunner's reply."""
        prompt = "".join(b["text"] for b in request.content if b["type"] == "text")
        self.prompts.append(prompt)
        if "fail" in prompt:
            raise RunError("upstream_error", "the model could not answer")
        async for event in self.inner.run(request):
            yield event

    async def aclose(self) -> None:
        """Nothing to release."""


async def test_batches_door_runs_a_batch_to_mixed_results(
    db_gateway_factory: Callable[..., Any],
) -> None:
    """create -> retrieve until ended -> results: succeeded messages and an errored request
    (on SQLite and PostgreSQL)."""
    gateway = await db_gateway_factory(PickyRunner())
    client = _sdk(gateway)
    created = await client.messages.batches.create(
        requests=[_request("a", "hello"), _request("b", "please fail"), _request("c", "bye")]
    )
    assert created.type == "message_batch" and created.id.startswith("msgbatch_")
    assert created.processing_status == "in_progress" and created.results_url is None
    assert created.request_counts.processing == 3
    batch = await _ended(client, created.id)
    assert (batch.request_counts.succeeded, batch.request_counts.errored) == (2, 1)
    assert batch.ended_at is not None and batch.expires_at > batch.created_at
    assert batch.results_url == f"http://ccgate.test/v1/messages/batches/{batch.id}/results"
    results = await _results(client, batch.id)
    ok = results["a"].result
    assert ok.type == "succeeded"
    assert ok.message.content[0].text == "reply: hello"  # type: ignore[union-attr]
    assert (ok.message.usage.input_tokens, ok.message.stop_reason) == (5, "end_turn")
    failed = results["b"].result
    assert failed.type == "errored" and failed.error.error.type == "api_error"
    assert "could not answer" in failed.error.error.message


async def test_batches_door_lists_pages_newest_first(
    gateway_factory: Callable[..., Any],
) -> None:
    """list pages with has_more/first_id/last_id; the SDK's auto-paging walks every batch."""
    gateway = await gateway_factory()
    client = _sdk(gateway)
    ids = [(await client.messages.batches.create(requests=_requests(1))).id for _ in range(3)]
    page = await client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2]
    assert page.has_more and page.last_id == ids[1]
    assert [b.id async for b in client.messages.batches.list(limit=2)] == ids[::-1]


async def test_batches_door_cancel_ends_requests_canceled(
    gateway_factory: Callable[..., Any],
) -> None:
    """cancel: canceling while a request runs, then ended with canceled results."""
    runner = FakeRunner(block=True)
    gateway = await gateway_factory(runner)
    client = _sdk(gateway)
    created = await client.messages.batches.create(requests=_requests(5))
    async with asyncio.timeout(10):
        while not runner.started:
            await asyncio.sleep(0.02)
    canceling = await client.messages.batches.cancel(created.id)
    assert canceling.processing_status in ("canceling", "ended")
    assert canceling.cancel_initiated_at is not None
    batch = await _ended(client, created.id)
    assert batch.request_counts.canceled >= 3 and batch.request_counts.processing == 0
    kinds = {r.result.type for r in (await _results(client, batch.id)).values()}
    assert "canceled" in kinds


async def test_batches_door_delete_only_after_the_end(
    gateway_factory: Callable[..., Any],
) -> None:
    """delete is a 400 while the batch runs; after its end it goes, and retrieve is 404."""
    runner = FakeRunner(block=True)
    gateway = await gateway_factory(runner)
    client = _sdk(gateway)
    created = await client.messages.batches.create(requests=_requests(1))
    with pytest.raises(anthropic.BadRequestError, match="still in_progress"):
        await client.messages.batches.delete(created.id)
    runner.released.set()
    await _ended(client, created.id)
    deleted = await client.messages.batches.delete(created.id)
    assert (deleted.id, deleted.type) == (created.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.batches.retrieve(created.id)


@pytest.mark.parametrize(
    ("requests", "match"),
    [
        ([], "1 to 100,000 requests"),
        ([_request("a", "x"), _request("a", "y")], r"requests\[1\]\.custom_id 'a' is used more"),
        (
            [_request("a", "x"), {"custom_id": "b", "params": {"model": "sonnet"}}],
            r"requests\[1\]\.params \(custom_id 'b'\): max_tokens",
        ),
        ([_request("s", "x", stream=True)], r"requests\[0\].*stream"),
        ([_request("t", "x", tools=[{"name": "f", "input_schema": {}}])], "tools"),
        ([_request("m", "x", model="gpt-4o")], r"requests\[0\]\.params \(custom_id 'm'\)"),
    ],
)
async def test_batches_door_refuses_invalid_batches_with_400(
    gateway_factory: Callable[..., Any], requests: list[Any], match: str
) -> None:
    """Empty, duplicate ids, bad params, stream, tools, an unserved model: a clear 400."""
    runner = FakeRunner()
    gateway = await gateway_factory(runner)
    with pytest.raises(anthropic.BadRequestError, match=match):
        await _sdk(gateway).messages.batches.create(requests=requests)
    assert not (await _sdk(gateway).messages.batches.list()).data
    assert not runner.started


async def test_batches_door_refuses_more_than_the_maximum(
    gateway_factory: Callable[..., Any],
) -> None:
    """More requests than CCGATE_BATCH_MAX_REQUESTS is a 400 saying the bound."""
    gateway = await gateway_factory(CCGATE_BATCH_MAX_REQUESTS=2)
    with pytest.raises(anthropic.BadRequestError, match="1 to 2 requests; this one has 3"):
        await _sdk(gateway).messages.batches.create(requests=_requests(3))


async def test_batches_door_model_the_key_may_not_use_is_403(
    gateway_factory: Callable[..., Any],
) -> None:
    """A request for a model outside the key's models list is a 403 naming the request."""
    gateway = await gateway_factory()
    key = await _key(gateway, "haiku-only", models=("claude-haiku-*",))
    with pytest.raises(anthropic.PermissionDeniedError, match=r"requests\[0\]"):
        await _sdk(gateway, key).messages.batches.create(requests=_requests(1))


async def test_batches_door_another_keys_batch_is_404(
    gateway_factory: Callable[..., Any],
) -> None:
    """Retrieve, cancel, results and delete of another key's batch are all 404."""
    gateway = await gateway_factory()
    created = await _sdk(gateway).messages.batches.create(requests=_requests(1))
    await _ended(_sdk(gateway), created.id)
    other = _sdk(gateway, await _key(gateway, "other"))
    with pytest.raises(anthropic.NotFoundError):
        await other.messages.batches.retrieve(created.id)
    with pytest.raises(anthropic.NotFoundError):
        await other.messages.batches.cancel(created.id)
    with pytest.raises(anthropic.NotFoundError):
        await other.messages.batches.delete(created.id)
    response = await gateway.client.get(
        f"/v1/messages/batches/{created.id}/results", headers={"x-api-key": other.api_key}
    )
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    assert not (await other.messages.batches.list()).data


async def test_batches_door_spent_quota_mid_batch_errors_the_rest(
    gateway_factory: Callable[..., Any],
) -> None:
    """Each request passes admission: once the key's tokens are spent the rest end errored."""
    gateway = await gateway_factory(CCGATE_BATCH_INFLIGHT=1)
    client = _sdk(gateway, await _key(gateway, "frugal", tokens_per_day=10))  # a run uses 12
    created = await client.messages.batches.create(requests=_requests(3))
    batch = await _ended(client, created.id)
    assert (batch.request_counts.succeeded, batch.request_counts.errored) == (1, 2)
    results = await _results(client, created.id)
    assert results["r0"].result.type == "succeeded"
    refused = results["r2"].result
    assert refused.type == "errored" and refused.error.error.type == "rate_limit_error"
    assert "tokens per day" in refused.error.error.message


async def test_batches_door_rate_limit_waits_and_retries(
    gateway_factory: Callable[..., Any],
) -> None:
    """A key's concurrency refusal waits: every request still succeeds, one at a time."""
    runner = FakeRunner(delay=0.01)
    gateway = await gateway_factory(runner, CCGATE_BATCH_INFLIGHT=3)
    client = _sdk(gateway, await _key(gateway, "single", concurrency=1))
    created = await client.messages.batches.create(requests=_requests(3))
    batch = await _ended(client, created.id)
    assert batch.request_counts.succeeded == 3
    assert runner.peak_running == 1


async def test_batches_door_counts_usage_and_audits_each_request(
    gateway_factory: Callable[..., Any],
) -> None:
    """Each request's tokens reach the key's usage report: one audit row per request."""
    gateway = await gateway_factory()
    client = _sdk(gateway)
    created = await client.messages.batches.create(requests=_requests(2))
    await _ended(client, created.id)
    services = app_services(gateway.app)
    await asyncio.sleep(0.05)
    await services.audit.flush()
    rows = [
        r
        for r in await services.store.audit.recent(20)
        if r["route"] == "/v1/messages/batches/{message_batch_id}/requests"
    ]
    assert len(rows) == 2
    assert {(r["door"], r["key_name"], r["input_tokens"], r["output_tokens"]) for r in rows} == {
        ("anthropic", "app", 5, 7)
    }
    usage = await gateway.client.get("/api/v1/usage", headers=gateway.auth())
    assert usage.json()["used"]["tokens_today"] == 24


async def test_batches_door_does_not_starve_another_keys_sync_call(
    gateway_factory: Callable[..., Any],
) -> None:
    """With one slot, another key's /v1/messages is answered while a big batch still runs."""
    runner = FakeRunner(reply="abcdefghijkl", delay=0.01)
    gateway = await gateway_factory(runner, CCGATE_CONCURRENCY=1)
    created = await _sdk(gateway).messages.batches.create(requests=_requests(40))
    async with asyncio.timeout(10):
        while len(runner.started) < 2:
            await asyncio.sleep(0.01)
    other = _sdk(gateway, await _key(gateway, "other"))
    message = await other.messages.create(
        model="sonnet", max_tokens=8, messages=[{"role": "user", "content": "me too"}]
    )
    assert message.content[0].text == "abcdefghijkl"  # type: ignore[union-attr]
    batch = await _sdk(gateway).messages.batches.retrieve(created.id)
    assert batch.processing_status == "in_progress" and batch.request_counts.processing > 20


async def test_batches_door_large_create_does_not_hold_the_loop(
    gateway_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a 20,000-request batch is being stored, another request is answered."""
    gateway = await gateway_factory(CCGATE_MAX_BODY_BYTES=64 * 1024 * 1024)
    table = app_services(gateway.app).store.batches
    store_batch = table.insert
    order: list[str] = []
    storing = asyncio.Event()

    async def insert(**kwargs: Any) -> Any:
        order.append("storing")
        storing.set()
        try:
            return await store_batch(**kwargs)
        finally:
            order.append("stored")

    monkeypatch.setattr(table, "insert", insert)
    client = _sdk(gateway)
    create = asyncio.create_task(client.messages.batches.create(requests=_requests(20_000)))
    async with asyncio.timeout(60):
        await storing.wait()
    listed = await client.messages.batches.list()
    order.append("answered")
    assert (await create).request_counts.processing == 20_000
    assert not listed.data
    assert order == ["storing", "answered", "stored"]


# -- the API backend -------------------------------------------------------------------


@pytest.fixture
async def api_batches(
    make_settings: Callable[..., Settings], fake: FakeAnthropic
) -> AsyncIterator[Gateway]:
    """ccgate on the API backend (the fake upstream), feeding one request at a time."""
    app = create_app(
        make_settings(
            CCGATE_BACKEND="api",
            ANTHROPIC_BASE_URL=fake.url,
            ANTHROPIC_API_KEY=FAKE_API_KEY,
            CCGATE_BATCH_INFLIGHT=1,
        )
    )
    async with app.router.lifespan_context(app):
        secret = (await app_services(app).keyring.create("app")).secret
        yield Gateway(app, None, secret)  # type: ignore[arg-type]


async def test_batches_door_api_backend_runs_each_request_upstream_once(
    api_batches: Gateway, fake: FakeAnthropic
) -> None:
    """On the API backend each request is one upstream call; an upstream 400 is errored."""
    fake.reply(Text("first answer", usage_in=20, usage_out=4))
    fake.reply(Error(400, "invalid_request_error", "prompt is not acceptable"))
    fake.reply(Text("third answer"))
    client = _sdk(api_batches)
    created = await client.messages.batches.create(
        requests=[
            _request("one", "a", system="be brief"),
            _request("two", "b"),
            _request("three", "c", temperature=0.5),
        ]
    )
    batch = await _ended(client, created.id)
    assert (batch.request_counts.succeeded, batch.request_counts.errored) == (2, 1)
    results = await _results(client, created.id)
    first = results["one"].result
    assert first.type == "succeeded"
    assert first.message.content[0].text == "first answer"  # type: ignore[union-attr]
    assert first.message.model == "claude-sonnet-5-5" and first.message.usage.output_tokens == 4
    assert results["two"].result.type == "errored"
    sent = fake.message_requests()
    assert len(sent) == 3
    assert sent[0].body["model"] == "claude-sonnet-5-5" and "be brief" in str(sent[0].body)
    assert sent[2].body["temperature"] == 0.5
