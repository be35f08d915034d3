"""The Anthropic API runner against the fake Anthropic API over 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from ccgate.circuit import CircuitBreaker
from ccgate.runners.anthropic_api import AnthropicApiRunner
from ccgate.runners.anthropic_client import AnthropicClient
from ccgate.runners.anthropic_errors import retry_after_from
from ccgate.runners.base import RunError, RunEvent, RunRequest, RunResult, RunStarted, TextDelta
from ccgate.runners.base import collect as collect_run
from tests.support.fake_anthropic import (
    Error,
    FakeAnthropic,
    Hang,
    Slow,
    StreamError,
    Text,
)

OPERATOR_KEY = "sk-ant-operator-secret-0123456789"
MODEL = "claude-sonnet-4-5"
Build = Callable[..., AnthropicApiRunner]


class FakeClock:
    """A monotonic clock that only moves when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    """A running fake Anthropic API."""
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
async def build(fake: FakeAnthropic) -> AsyncIterator[Build]:
    """Build runners (their pass-through client is ``.client``) pointed at ``fake`` with the
    operator key; all closed at the end."""
    runners: list[AnthropicApiRunner] = []

    def make(
        breaker: CircuitBreaker | None = None, base_url: str | None = None, **kwargs: Any
    ) -> AnthropicApiRunner:
        client = AnthropicClient(
            api_key=OPERATOR_KEY,
            base_url=base_url or fake.url,
            breaker=breaker or CircuitBreaker(5, 30.0),
            **kwargs,
        )
        runners.append(AnthropicApiRunner(client))
        return runners[-1]

    yield make
    for runner in runners:
        await runner.aclose()


async def _events(runner: AnthropicApiRunner, request: RunRequest) -> list[RunEvent]:
    async with contextlib.aclosing(runner.run(request)) as events:
        return [event async for event in events]


async def _failure(runner: AnthropicApiRunner, request: RunRequest | None = None) -> RunError:
    with pytest.raises(RunError) as failed:
        await collect_run(runner, request or RunRequest.from_text("hi", MODEL))
    return failed.value


def _iso(seconds_from_now: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).isoformat()


async def test_api_runner_streams_text_deltas_as_they_arrive(
    fake: FakeAnthropic, build: Build
) -> None:
    """Deltas come one by one while upstream is still writing, then a priced result."""
    fake.reply(Slow("alpha beta gamma delta", delay=0.2))
    arrivals: list[float] = []
    events: list[RunEvent] = []
    async with contextlib.aclosing(build().run(RunRequest.from_text("hi", MODEL))) as stream:
        async for event in stream:
            arrivals.append(time.monotonic())
            events.append(event)
    started, *deltas, result = events
    assert started == RunStarted(session_id=None, model=MODEL)
    assert [d.text for d in deltas if isinstance(d, TextDelta)] == [
        "alpha",
        " beta",
        " gamma",
        " delta",
    ]
    assert arrivals[-1] - arrivals[1] >= 0.5
    assert isinstance(result, RunResult)
    assert result.text == "alpha beta gamma delta"
    assert result.usage == {"input_tokens": 12, "output_tokens": 4}
    assert result.cost_usd == pytest.approx((12 * 3 + 4 * 15) / 1e6)
    assert result.stop_reason == "end_turn"
    assert result.duration_ms is not None


async def test_api_runner_sends_history_system_and_sampling(
    fake: FakeAnthropic, build: Build
) -> None:
    """The whole conversation, both system prompts and the sampling controls reach upstream."""
    history = [
        {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "4"}]},
    ]
    request = RunRequest.from_text(
        "and 3+3?",
        MODEL,
        history=history,
        system_prompt="Be terse.",
        append_system_prompt="Answer in digits.",
        max_tokens=50,
        stop_sequences=["\n\n"],
        temperature=0.2,
        top_p=0.9,
    )
    await collect_run(build(), request)
    [sent] = fake.message_requests()
    assert sent.body == {
        "model": MODEL,
        "max_tokens": 50,
        "stream": True,
        "messages": [*history, {"role": "user", "content": [{"type": "text", "text": "and 3+3?"}]}],
        "system": "Be terse.\n\nAnswer in digits.",
        "stop_sequences": ["\n\n"],
        "temperature": 0.2,
        "top_p": 0.9,
    }


async def test_api_runner_leaves_unset_controls_to_upstream(
    fake: FakeAnthropic, build: Build
) -> None:
    """Without settings the body has max_tokens 4096 and no system or sampling fields."""
    await collect_run(build(), RunRequest.from_text("hi", MODEL))
    [sent] = fake.message_requests()
    assert sent.body["max_tokens"] == 4096
    assert not {"system", "stop_sequences", "temperature", "top_p"} & set(sent.body)
    assert sent.headers["x-api-key"] == OPERATOR_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in sent.headers


async def test_api_runner_forwards_only_version_and_beta_client_headers(
    fake: FakeAnthropic, build: Build
) -> None:
    """The operator key replaces the client's; only anthropic-version/-beta pass through."""
    client_headers = {
        "X-Api-Key": "sk-ant-client-key",
        "Authorization": "Bearer client-token",
        "Anthropic-Version": "2023-01-01",
        "anthropic-beta": "prompt-caching-2024-07-31",
        "cookie": "session=abc",
        "x-forwarded-for": "10.0.0.1",
        "x-custom": "1",
    }
    await build().client.send({"model": MODEL, "max_tokens": 10, "messages": []}, client_headers)
    [sent] = fake.message_requests()
    assert sent.headers["x-api-key"] == OPERATOR_KEY
    assert sent.headers["anthropic-version"] == "2023-01-01"
    assert sent.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    for name in ("authorization", "cookie", "x-forwarded-for", "x-custom"):
        assert name not in sent.headers
    assert "client" not in str(sent.headers)


async def test_api_runner_429_is_rate_limited_until_the_reset(
    fake: FakeAnthropic, build: Build
) -> None:
    """A 429 maps to upstream_rate_limited, waiting until the rate-limit reset time."""
    reset = {"anthropic-ratelimit-requests-reset": _iso(42)}
    fake.reply(Error(429, "rate_limit_error", "Number of requests exceeded", headers=reset))
    runner = build()
    error = await _failure(runner)
    assert error.error_type == "upstream_rate_limited"
    assert error.upstream_status == 429
    assert error.retry_after == pytest.approx(42, abs=2)
    assert "Number of requests exceeded" in error.message
    assert runner.breaker.consecutive_failures == 0


def test_api_runner_retry_after_prefers_the_header_then_exhausted_limits() -> None:
    """retry-after wins; otherwise the latest reset of a limit at 0 beats earlier resets."""
    both = httpx.Headers(
        {
            "anthropic-ratelimit-requests-reset": _iso(5),
            "anthropic-ratelimit-requests-remaining": "40",
            "anthropic-ratelimit-tokens-reset": _iso(50),
            "anthropic-ratelimit-tokens-remaining": "0",
        }
    )
    assert retry_after_from(both) == pytest.approx(50, abs=2)
    assert retry_after_from(httpx.Headers({**both, "retry-after": "7"})) == 7.0
    assert retry_after_from(
        httpx.Headers({"anthropic-ratelimit-requests-reset": _iso(9)})
    ) == pytest.approx(9, abs=2)
    assert retry_after_from(httpx.Headers({})) is None


async def test_api_runner_401_is_a_server_side_auth_error_without_the_key(
    fake: FakeAnthropic, build: Build
) -> None:
    """A refused operator key is upstream_auth_error (502 to clients) and is never echoed."""
    fake.reply(Error(401, "authentication_error", f"invalid x-api-key {OPERATOR_KEY}"))
    runner = build()
    error = await _failure(runner)
    assert error.error_type == "upstream_auth_error"
    assert OPERATOR_KEY not in error.message
    assert "ANTHROPIC_API_KEY" in error.message
    assert runner.breaker.consecutive_failures == 0


@pytest.mark.parametrize(
    ("status", "error_type", "counted"),
    [
        (400, "upstream_bad_request", False),
        (404, "upstream_bad_request", False),
        (413, "upstream_request_too_large", False),
        (500, "upstream_overloaded", True),
        (529, "upstream_overloaded", True),
    ],
)
async def test_api_runner_maps_upstream_statuses(
    fake: FakeAnthropic, build: Build, status: int, error_type: str, counted: bool
) -> None:
    """Each upstream status becomes its documented type; only 5xx count against upstream."""
    fake.reply(Error(status, "some_error", "prompt is too long: 300000 tokens"))
    runner = build()
    error = await _failure(runner)
    assert error.error_type == error_type
    assert error.upstream_status == status
    assert "prompt is too long" in error.message
    assert runner.breaker.consecutive_failures == (1 if counted else 0)


async def test_api_runner_repeated_529_opens_the_circuit(fake: FakeAnthropic, build: Build) -> None:
    """After N overloaded answers calls fail fast with circuit_open and never reach upstream."""
    fake.default = Error(529, "overloaded_error", "Overloaded", retry_after=3)
    runner = build(CircuitBreaker(3, 30.0))
    for _ in range(3):
        assert (await _failure(runner)).error_type == "upstream_overloaded"
    for _ in range(5):
        error = await _failure(runner)
        assert error.error_type == "circuit_open"
        assert error.retry_after == pytest.approx(30, abs=1)
    assert len(fake.message_requests()) == 3
    assert runner.breaker.snapshot()["state"] == "open"


async def test_api_runner_half_open_sends_one_probe_of_fifty(
    fake: FakeAnthropic, build: Build
) -> None:
    """After the cooldown exactly one of 50 concurrent runs reaches upstream; it closes the
    breaker and later runs pass again."""
    clock = FakeClock()
    runner = build(CircuitBreaker(1, 30.0, clock=clock))
    fake.reply(Error(529, "overloaded_error", "Overloaded"))
    await _failure(runner)
    clock.now += 31
    outcomes = await asyncio.gather(
        *(collect_run(runner, RunRequest.from_text("hi", MODEL)) for _ in range(50)),
        return_exceptions=True,
    )
    assert sum(isinstance(o, RunResult) for o in outcomes) == 1
    assert all(o.error_type == "circuit_open" for o in outcomes if isinstance(o, RunError))
    assert len(fake.message_requests()) == 2
    assert runner.breaker.state == "closed"
    await collect_run(runner, RunRequest.from_text("again", MODEL))
    assert len(fake.message_requests()) == 3


async def test_api_runner_unreachable_upstream_is_overloaded(build: Build) -> None:
    """A refused connection is upstream_overloaded and counts as an upstream failure."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runner = build(base_url=f"http://127.0.0.1:{port}")
    error = await _failure(runner)
    assert error.error_type == "upstream_overloaded"
    assert OPERATOR_KEY not in error.message
    assert runner.breaker.consecutive_failures == 1


async def test_api_runner_honours_the_run_deadline(fake: FakeAnthropic, build: Build) -> None:
    """A stream that stalls ends at the run's timeout_secs without blaming upstream."""
    fake.reply(Hang())
    runner = build()
    began = time.monotonic()
    error = await _failure(runner, RunRequest.from_text("hi", MODEL, timeout_secs=0.3))
    assert error.error_type == "timeout"
    assert "0.3 s" in error.message
    assert time.monotonic() - began < 2
    assert runner.breaker.consecutive_failures == 0


async def test_api_runner_error_event_mid_stream_maps_like_http(
    fake: FakeAnthropic, build: Build
) -> None:
    """An overloaded error event inside a 200 stream is upstream_overloaded and a failure."""
    fake.reply(StreamError("partial answer", "overloaded_error", "Overloaded"))
    runner = build()
    error = await _failure(runner)
    assert error.error_type == "upstream_overloaded"
    assert error.upstream_status == 529
    assert runner.breaker.consecutive_failures == 1


async def test_api_runner_open_stream_passes_bytes_through_as_they_come(
    fake: FakeAnthropic, build: Build
) -> None:
    """Raw SSE bytes arrive event by event, unchanged, while usage and model are filled in."""
    fake.reply(Slow("one two three", delay=0.25))
    body = {
        "model": MODEL,
        "max_tokens": 20,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    chunks: list[tuple[float, bytes]] = []
    async with await build().client.open_stream(body, {}) as stream:
        assert stream.status == 200
        assert set(stream.headers) == {"content-type", "request-id"}
        async for chunk in stream:
            chunks.append((time.monotonic(), chunk))
    raw = b"".join(chunk for _, chunk in chunks)
    assert raw.startswith(b"event: message_start\ndata: {")
    assert raw.count(b"event: content_block_delta\n") == 3
    assert b"event: ping\ndata: " in raw
    assert raw.endswith(b'event: message_stop\ndata: {"type": "message_stop"}\n\n')
    assert chunks[-1][0] - chunks[0][0] >= 0.4
    assert stream.usage == {"input_tokens": 12, "output_tokens": 3}
    assert (stream.model, stream.stop_reason, stream.completed) == (MODEL, "end_turn", True)


async def test_api_runner_open_stream_error_status_raises_after_reading_it(
    fake: FakeAnthropic, build: Build
) -> None:
    """A non-2xx answer to a pass-through stream raises with upstream's own message."""
    fake.reply(Error(400, "invalid_request_error", "max_tokens: must be at most 64000"))
    with pytest.raises(RunError) as failed:
        await build().client.open_stream({"model": MODEL, "stream": True}, {})
    assert failed.value.error_type == "upstream_bad_request"
    assert failed.value.message == "max_tokens: must be at most 64000"


async def test_api_runner_send_returns_upstream_message(fake: FakeAnthropic, build: Build) -> None:
    """A non-streaming pass-through returns the message object upstream sent, with usage."""
    fake.reply(Text("plain answer", usage_in=7, usage_out=2))
    reply = await build().client.send({"model": MODEL, "max_tokens": 10, "messages": []}, {})
    assert reply.status == 200
    assert reply.json["content"] == [{"type": "text", "text": "plain answer"}]
    assert reply.usage == {"input_tokens": 7, "output_tokens": 2}
    assert (reply.model, reply.stop_reason) == (MODEL, "end_turn")
    assert reply.headers["content-type"] == "application/json"


async def test_api_runner_count_tokens_is_forwarded(fake: FakeAnthropic, build: Build) -> None:
    """count_tokens reaches upstream's endpoint with the body and operator key, and answers."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "count me " * 40}]}
    answer = await build().client.count_tokens(body, {"x-api-key": "sk-ant-client"})
    assert answer["input_tokens"] > 0
    [sent] = [r for r in fake.requests if r.path == "/v1/messages/count_tokens"]
    assert sent.body == body
    assert sent.headers["x-api-key"] == OPERATOR_KEY
    assert fake.message_requests() == []


async def test_api_runner_open_stream_closed_early_frees_the_connection(
    fake: FakeAnthropic, build: Build
) -> None:
    """A client that leaves mid-stream closes upstream; the runner keeps serving, unblamed."""
    fake.reply(Hang())
    runner = build(max_connections=1)
    stream = await runner.client.open_stream({"model": MODEL, "stream": True}, {})
    async for chunk in stream:
        assert b"message_start" in chunk
        break
    await stream.aclose()
    assert stream.usage == {"input_tokens": 12, "output_tokens": 1}
    result = await collect_run(runner, RunRequest.from_text("next", MODEL))
    assert result.text == "Hello from fake"
    assert runner.breaker.consecutive_failures == 0


async def test_api_runner_reuses_keep_alive_connections(fake: FakeAnthropic, build: Build) -> None:
    """Back-to-back runs, streamed or not, share one upstream connection."""
    runner = build()
    for prompt in ("one", "two"):
        await collect_run(runner, RunRequest.from_text(prompt, MODEL))
    await runner.client.send({"model": MODEL, "max_tokens": 10, "messages": []}, {})
    async with await runner.client.open_stream({"model": MODEL, "stream": True}, {}) as stream:
        async for _ in stream:
            pass
    await collect_run(runner, RunRequest.from_text("three", MODEL))
    ports = {r.client_port for r in fake.message_requests()}
    assert len(fake.message_requests()) == 5
    assert len(ports) == 1
