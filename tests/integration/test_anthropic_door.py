"""The Anthropic door through the official anthropic SDK, in process (FakeRunner)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types import MessageParam

from ccgate.api.deps import app_services
from ccgate.policy import KeyPolicy
from ccgate.runners.base import RunError, RunEvent, RunRequest, RunResult, TextDelta
from tests.support.fake_runner import FakeRunner

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJ"
    "RU5ErkJggg=="
)


def _sdk(gateway: Any, key: str | None = None) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key=key or gateway.key,
        base_url="http://ccgate.test",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gateway.app)),
    )


async def test_anthropic_door_create_returns_a_message(gateway_factory: Callable[..., Any]) -> None:
    """messages.create answers a message object the SDK parses, with usage."""
    gateway = await gateway_factory(FakeRunner(reply="hello there"))
    message = await _sdk(gateway).messages.create(
        model="sonnet", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].text == "hello there"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 7)
    assert message.id.startswith("msg_")


async def test_anthropic_door_hands_over_the_whole_conversation(
    gateway_factory: Callable[..., Any],
) -> None:
    """System, earlier turns and an image block all reach the runner unflattened."""
    runner = FakeRunner()
    gateway = await gateway_factory(runner)
    await _sdk(gateway).messages.create(
        model="sonnet",
        max_tokens=50,
        system=[{"type": "text", "text": "be terse"}],
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "answer one"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                ],
            },
        ],
    )
    request = runner.started[-1]
    assert request.system_prompt == "be terse"
    assert [m["role"] for m in request.history] == ["user", "assistant"]
    assert request.history[1]["content"] == [{"type": "text", "text": "answer one"}]
    assert [b["type"] for b in request.content] == ["text", "image"]


async def test_anthropic_door_stream_follows_the_event_sequence(
    gateway_factory: Callable[..., Any],
) -> None:
    """A stream is message_start, block start, deltas, block stop, message_delta, stop."""
    gateway = await gateway_factory(FakeRunner(reply="abcdefgh"))
    async with _sdk(gateway).messages.stream(
        model="sonnet", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and "message_delta" in kinds
    assert final.content[0].text == "abcdefgh"  # type: ignore[union-attr]
    assert final.usage.output_tokens == 7


async def test_anthropic_door_errors_raise_the_sdk_classes(
    gateway_factory: Callable[..., Any],
) -> None:
    """401, 400 and 429 come back as AuthenticationError, BadRequestError, RateLimitError."""
    gateway = await gateway_factory(
        FakeRunner(error=RunError("upstream_rate_limited", "slow down", retry_after=30))
    )
    messages: list[MessageParam] = [{"role": "user", "content": "x"}]
    with pytest.raises(anthropic.AuthenticationError):
        await _sdk(gateway, "ccg_wrong").messages.create(
            model="sonnet", max_tokens=10, messages=messages
        )
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        await _sdk(gateway).messages.create(model="sonnet", max_tokens=0, messages=messages)
    with pytest.raises(anthropic.RateLimitError):
        await _sdk(gateway).messages.create(model="sonnet", max_tokens=10, messages=messages)


async def test_anthropic_door_refuses_tools_on_the_cli_backend(
    gateway_factory: Callable[..., Any],
) -> None:
    """A request with tools is a clear 400 saying tools are off, and nothing runs."""
    runner = FakeRunner()
    gateway = await gateway_factory(runner)
    with pytest.raises(anthropic.BadRequestError, match="tool use is off"):
        await _sdk(gateway).messages.create(
            model="sonnet",
            max_tokens=10,
            messages=[{"role": "user", "content": "x"}],
            tools=[{"name": "f", "input_schema": {"type": "object"}}],
        )
    assert runner.started == []


async def test_anthropic_door_model_allowlists(gateway_factory: Callable[..., Any]) -> None:
    """A model the server does not serve is 400; one the key may not use is 403."""
    gateway = await gateway_factory(CCGATE_ALLOWED_MODELS="sonnet,haiku")
    limited = await app_services(gateway.app).keyring.create(
        "limited", KeyPolicy(models=("haiku",))
    )
    messages: list[MessageParam] = [{"role": "user", "content": "x"}]
    with pytest.raises(anthropic.BadRequestError):
        await _sdk(gateway).messages.create(model="gpt-4", max_tokens=10, messages=messages)
    with pytest.raises(anthropic.PermissionDeniedError):
        await _sdk(gateway, limited.secret).messages.create(
            model="sonnet", max_tokens=10, messages=messages
        )
    ok = await _sdk(gateway, limited.secret).messages.create(
        model="haiku", max_tokens=10, messages=messages
    )
    assert ok.content


async def test_anthropic_door_count_tokens_estimates_on_the_cli_backend(
    gateway_factory: Callable[..., Any],
) -> None:
    """count_tokens answers an estimate that grows with the conversation."""
    gateway = await gateway_factory()
    sdk = _sdk(gateway)
    short = await sdk.messages.count_tokens(
        model="sonnet", messages=[{"role": "user", "content": "hi"}]
    )
    long = await sdk.messages.count_tokens(
        model="sonnet", messages=[{"role": "user", "content": "hi " * 400}]
    )
    assert 0 < short.input_tokens < long.input_tokens


async def test_anthropic_door_models_list_shows_the_keys_models(
    gateway_factory: Callable[..., Any],
) -> None:
    """models.list() parses and lists only what the key may use."""
    gateway = await gateway_factory(CCGATE_ALLOWED_MODELS="sonnet,haiku,claude-*")
    limited = await app_services(gateway.app).keyring.create(
        "limited", KeyPolicy(models=("haiku",))
    )
    everything = [m.id async for m in _sdk(gateway).models.list()]
    only = [m.id async for m in _sdk(gateway, limited.secret).models.list()]
    assert "sonnet" in everything and "claude-sonnet-4-5" in everything
    assert only == ["haiku"]


async def test_anthropic_door_bad_bodies_are_400_in_the_anthropic_shape(
    gateway_factory: Callable[..., Any],
) -> None:
    """Broken JSON and bad fields answer the documented error envelope, never a 500."""
    gateway = await gateway_factory()
    for body in (
        b"{",
        b"[]",
        b'{"model":"sonnet","max_tokens":5,"messages":[]}',
        b'{"model":"sonnet","max_tokens":5,"messages":[{"role":"bot","content":"x"}]}',
        b'{"model":"sonnet","max_tokens":5,"temperature":7,'
        b'"messages":[{"role":"user","content":"x"}]}',
        b'{"model":"sonnet","max_tokens":5,"messages":[{"role":"assistant","content":"x"}]}',
    ):
        response = await gateway.client.post(
            "/v1/messages", content=body, headers={"x-api-key": gateway.key}
        )
        assert response.status_code == 400, body
        payload = response.json()
        assert payload["type"] == "error"
        assert payload["error"]["type"] == "invalid_request_error"
        assert response.headers["request-id"].startswith("req_")


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"sonnet","max_tokens":5,"messages":[{"role":"user","content":"a\\ud800b"}]}',
        b'{"model":"sonnet","max_tokens":5,"messages":[{"role":"user","content":"\\uDC00"}]}',
        '{"model":"sonnet","max_tokens":5,"messages":[{"role":"user","content":"x"}]}'.encode(
            "utf-16"
        ),
    ],
)
async def test_anthropic_door_lone_surrogates_are_400(
    gateway_factory: Callable[..., Any], body: bytes
) -> None:
    """Text holding a lone surrogate is refused as invalid Unicode, never a 500."""
    gateway = await gateway_factory()
    response = await gateway.client.post(
        "/v1/messages", content=body, headers={"x-api-key": gateway.key}
    )
    if body.startswith(b"\xff\xfe"):  # valid UTF-16 JSON: accepted like UTF-8
        assert response.status_code == 200
        return
    assert response.status_code == 400
    assert "surrogate" in response.json()["error"]["message"]


async def test_anthropic_door_valid_escaped_pairs_pass(gateway_factory: Callable[..., Any]) -> None:
    """An emoji written as an escaped surrogate pair is valid text and runs."""
    runner = FakeRunner()
    gateway = await gateway_factory(runner)
    body = (
        b'{"model":"sonnet","max_tokens":5,"messages":[{"role":"user","content":"\\ud83d\\ude00"}]}'
    )
    response = await gateway.client.post(
        "/v1/messages", content=body, headers={"x-api-key": gateway.key}
    )
    assert response.status_code == 200
    assert runner.started[-1].content == [{"type": "text", "text": "\U0001f600"}]


async def test_anthropic_door_audit_row_keeps_sizes_and_outcome(
    gateway_factory: Callable[..., Any],
) -> None:
    """The audit row of a /v1/messages job holds its prompt size as well as its tokens."""
    gateway = await gateway_factory()
    await _sdk(gateway).messages.create(
        model="sonnet", max_tokens=10, messages=[{"role": "user", "content": "hello"}]
    )
    await app_services(gateway.app).audit.flush()
    [row] = await app_services(gateway.app).store.audit.recent(1)
    assert (row["door"], row["prompt_bytes"], row["job_status"]) == ("anthropic", 5, "completed")
    assert (row["input_tokens"], row["output_tokens"]) == (5, 7)


class _RestartingRunner(FakeRunner):
    """Streams half an answer, then ends with a different whole answer (the CLI asking again
    after its stream broke)."""

    async def run(self, request: RunRequest) -> AsyncGenerator[RunEvent, None]:
        self.started.append(request)
        yield TextDelta("half of")
        yield RunResult(text="second try", model=request.model, usage={"output_tokens": 2})


async def test_anthropic_door_stream_never_glues_a_restarted_answer(
    gateway_factory: Callable[..., Any],
) -> None:
    """A final answer that does not go on from the streamed text ends the stream with an error,
    never with half of one answer glued to the other."""
    gateway = await gateway_factory(_RestartingRunner())
    body = {
        "model": "sonnet",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    reply = await gateway.client.post("/v1/messages", json=body, headers=gateway.auth())
    assert "half of" in reply.text and "try" not in reply.text
    assert "event: error" in reply.text and "message_stop" not in reply.text
