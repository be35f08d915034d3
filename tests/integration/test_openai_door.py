"""The OpenAI door through the official openai SDK, in process (FakeRunner)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest

from ccgate.api.deps import app_services
from ccgate.policy import KeyPolicy
from ccgate.runners.base import RunError
from tests.support.fake_runner import FakeRunner

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJ"
    "RU5ErkJggg=="
)


def _sdk(gateway: Any, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=key or gateway.key,
        base_url="http://ccgate.test/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gateway.app)),
    )


async def test_openai_door_create_returns_a_chat_completion(
    gateway_factory: Callable[..., Any],
) -> None:
    """chat.completions.create answers a chat.completion with usage and finish_reason."""
    gateway = await gateway_factory(FakeRunner(reply="hello there"))
    completion = await _sdk(gateway).chat.completions.create(
        model="sonnet", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content) == ("assistant", "hello there")
    assert choice.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 12


async def test_openai_door_translates_roles_and_images(gateway_factory: Callable[..., Any]) -> None:
    """System messages become the system prompt; data-URL images become image blocks."""
    runner = FakeRunner()
    gateway = await gateway_factory(runner)
    await _sdk(gateway).chat.completions.create(
        model="sonnet",
        messages=[
            {"role": "system", "content": "be terse"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "answer one"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            },
        ],
    )
    request = runner.started[-1]
    assert request.system_prompt == "be terse"
    assert request.history == [
        {"role": "user", "content": [{"type": "text", "text": "first"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "answer one"}]},
    ]
    image = request.content[1]
    assert image["type"] == "image"
    assert image["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": PNG,
    }


async def test_openai_door_stream_chunks_role_first_usage_last(
    gateway_factory: Callable[..., Any],
) -> None:
    """The first delta has the role, the last chunk has usage and no choices, then [DONE]."""
    gateway = await gateway_factory(FakeRunner(reply="abcdefgh"))
    stream = await _sdk(gateway).chat.completions.create(
        model="sonnet",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "abcdefgh"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishing[0].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert len({c.id for c in chunks}) == 1


async def test_openai_door_errors_raise_the_sdk_classes(
    gateway_factory: Callable[..., Any],
) -> None:
    """401, 400 and 429 come back as AuthenticationError, BadRequestError, RateLimitError."""
    gateway = await gateway_factory(
        FakeRunner(error=RunError("upstream_rate_limited", "slow down", retry_after=30))
    )
    ask: dict[str, Any] = {"model": "sonnet", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(openai.AuthenticationError):
        await _sdk(gateway, "ccg_wrong").chat.completions.create(**ask)
    with pytest.raises(openai.BadRequestError):
        await _sdk(gateway).chat.completions.create(**ask, n=2)
    with pytest.raises(openai.RateLimitError) as caught:
        await _sdk(gateway).chat.completions.create(**ask)
    assert caught.value.response.headers["retry-after"] == "30"


async def test_openai_door_refuses_tool_calling(gateway_factory: Callable[..., Any]) -> None:
    """Tools are a clear 400 that says they are off; they are never silently dropped."""
    runner = FakeRunner()
    gateway = await gateway_factory(runner)
    with pytest.raises(openai.BadRequestError, match="off by design") as caught:
        await _sdk(gateway).chat.completions.create(
            model="sonnet",
            messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    assert caught.value.body["param"] == "tools"  # type: ignore[index]
    assert runner.started == []


async def test_openai_door_key_model_allowlist(gateway_factory: Callable[..., Any]) -> None:
    """A key limited to haiku gets 403 for sonnet and sees only haiku in models.list()."""
    gateway = await gateway_factory()
    limited = await app_services(gateway.app).keyring.create(
        "limited", KeyPolicy(models=("haiku",))
    )
    sdk = _sdk(gateway, limited.secret)
    with pytest.raises(openai.PermissionDeniedError):
        await sdk.chat.completions.create(
            model="sonnet", messages=[{"role": "user", "content": "x"}]
        )
    assert [m.id async for m in sdk.models.list()] == ["haiku"]


async def test_openai_door_bad_bodies_are_400_in_the_openai_shape(
    gateway_factory: Callable[..., Any],
) -> None:
    """Broken JSON and bad messages answer {"error": {message, type, param, code}}."""
    gateway = await gateway_factory()
    for body in (
        b"{",
        b'{"model":"sonnet","messages":[]}',
        b'{"model":"sonnet","messages":[{"role":"user","content":[{"type":"audio"}]}]}',
        b'{"model":"sonnet","messages":[{"role":"user","content":[{"type":'
        b'"image_url","image_url":{"url":"http://example.com/a.png"}}]}]}',
        b'{"model":"sonnet","temperature":"hot","messages":[{"role":"user","content":"x"}]}',
    ):
        response = await gateway.client.post(
            "/v1/chat/completions", content=body, headers=gateway.auth()
        )
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
