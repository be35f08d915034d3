"""The official anthropic and openai SDKs against a real `ccgate serve`, on both backends.

CLI backend: the real pinned claude CLI talks to the fake Anthropic API. API backend: ccgate
itself talks to the same fake API with the operator's key.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.e2e.conftest import StartServer, wait_for_no_runs
from tests.support.fake_anthropic import FAKE_API_KEY, Error, FakeAnthropic, Slow, Text
from tests.support.server import ServerProcess

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJ"
    "RU5ErkJggg=="
)
BACKENDS = ["cli", "api"]


@pytest.fixture(params=BACKENDS)
def door_server(
    request: pytest.FixtureRequest,
    start_server: StartServer,
    server_env: dict[str, str],
    fake: FakeAnthropic,
) -> ServerProcess:
    """A running ccgate on the CLI backend (real CLI) or the API backend, both on the fake."""
    # The CLI would retry an upstream error once and then meet the fake's next (good) reply.
    env = {**server_env, "CCGATE_UPSTREAM_RETRIES": "0"}
    if request.param == "api":
        env.update(
            CCGATE_BACKEND="api", ANTHROPIC_BASE_URL=fake.url, ANTHROPIC_API_KEY=FAKE_API_KEY
        )
    return start_server(env)


# Every SDK client a test opens, closed when the test ends (an unclosed one warns when the
# collector finds it, in whichever test runs then).
_OPEN: list[anthropic.Anthropic | openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def _anthropic(server: ServerProcess, key: str) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, timeout=60)
    _OPEN.append(client)
    return client


def _openai(server: ServerProcess, key: str) -> openai.OpenAI:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)
    _OPEN.append(client)
    return client


def _turn_texts(body: Any) -> list[tuple[str, str]]:
    """(role, text) of each text block in the user and assistant turns the upstream got,
    skipping what the CLI adds of its own (reminders, environment notes)."""
    out = []
    for message in body["messages"]:
        if message["role"] not in ("user", "assistant"):
            continue
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks:
            text = block.get("text", "")
            if block.get("type") == "text" and not text.startswith("<system-reminder>"):
                out.append((message["role"], text))
    return out


def test_sdk_anthropic_create_and_models(door_server: ServerProcess, fake: FakeAnthropic) -> None:
    """messages.create returns the upstream's answer and models.list() parses."""
    key = door_server.create_key("sdk")
    fake.reply(Text("hello from upstream"))
    client = _anthropic(door_server, key)
    message = client.messages.create(
        model="sonnet", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].text == "hello from upstream"  # type: ignore[union-attr]
    assert message.usage.output_tokens > 0
    assert "sonnet" in [m.id for m in client.models.list()]


def test_sdk_anthropic_stream_arrives_incrementally(
    door_server: ServerProcess, fake: FakeAnthropic
) -> None:
    """Text deltas reach the SDK as the upstream sends them, not all at the end."""
    key = door_server.create_key("sdk")
    fake.reply(Slow("alpha beta gamma delta", delay=0.4, chunks=4))
    arrivals: list[float] = []
    with _anthropic(door_server, key).messages.stream(
        model="sonnet", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        for text in stream.text_stream:
            if text:
                arrivals.append(time.monotonic())
        final = stream.get_final_message()
    assert final.content[0].text == "alpha beta gamma delta"  # type: ignore[union-attr]
    assert len(arrivals) >= 3
    assert arrivals[-1] - arrivals[0] > 0.6


def test_sdk_openai_create_stream_and_models(
    door_server: ServerProcess, fake: FakeAnthropic
) -> None:
    """chat.completions create and stream work, and models.list() parses."""
    key = door_server.create_key("sdk")
    client = _openai(door_server, key)
    fake.reply(Text("plain answer"))
    completion = client.chat.completions.create(
        model="sonnet", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "plain answer"
    fake.reply(Slow("one two three", delay=0.3, chunks=3))
    stream = client.chat.completions.create(
        model="sonnet",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
    assert chunks[-1].usage is not None
    assert "sonnet" in [m.id for m in client.models.list()]


def test_sdk_multi_turn_reaches_upstream_whole(
    door_server: ServerProcess, fake: FakeAnthropic
) -> None:
    """Every earlier turn, the system prompt and an image reach the upstream, in order."""
    key = door_server.create_key("sdk")
    fake.reply(Text("third answer"))
    _anthropic(door_server, key).messages.create(
        model="sonnet",
        max_tokens=64,
        system="answer briefly",
        messages=[
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "second question"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                ],
            },
            {"role": "assistant", "content": "second answer"},
            {"role": "user", "content": "third question"},
        ],
    )
    body = fake.message_requests()[-1].body
    assert _turn_texts(body) == [
        ("user", "first question"),
        ("assistant", "first answer"),
        ("user", "second question"),
        ("assistant", "second answer"),
        ("user", "third question"),
    ]
    images = [
        b
        for m in body["messages"]
        if isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "image"
    ]
    assert images[0]["source"]["data"] == PNG
    system = (
        body["system"]
        if isinstance(body["system"], str)
        else " ".join(b["text"] for b in body["system"])
    )
    assert "answer briefly" in system


def test_sdk_openai_multi_turn_reaches_upstream_whole(
    door_server: ServerProcess, fake: FakeAnthropic
) -> None:
    """An OpenAI conversation arrives upstream as alternating turns, system separate."""
    key = door_server.create_key("sdk")
    fake.reply(Text("ok"))
    _openai(door_server, key).chat.completions.create(
        model="sonnet",
        messages=[
            {"role": "system", "content": "you are terse"},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
        ],
    )
    body = fake.message_requests()[-1].body
    assert _turn_texts(body) == [("user", "q1"), ("assistant", "a1"), ("user", "q2")]


def test_sdk_errors_raise_the_right_classes(
    door_server: ServerProcess, fake: FakeAnthropic
) -> None:
    """A bad key, a bad body and an upstream 429 raise the SDKs' own exception classes."""
    key = door_server.create_key("sdk")
    ask: dict[str, Any] = {
        "model": "sonnet",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "x"}],
    }
    with pytest.raises(anthropic.AuthenticationError):
        _anthropic(door_server, "ccg_not_a_key").messages.create(**ask)
    with pytest.raises(anthropic.BadRequestError):
        _anthropic(door_server, key).messages.create(**{**ask, "max_tokens": -1})
    fake.reply(Error(429, "rate_limit_error", "slow down", retry_after=17))
    with pytest.raises(anthropic.RateLimitError):
        _anthropic(door_server, key).messages.create(**ask)
    fake.reply(Error(429, "rate_limit_error", "slow down", retry_after=17))
    with pytest.raises(openai.RateLimitError):
        _openai(door_server, key).chat.completions.create(
            model="sonnet", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.AuthenticationError):
        _openai(door_server, "ccg_not_a_key").chat.completions.create(
            model="sonnet", messages=[{"role": "user", "content": "x"}]
        )


def test_sdk_upstream_auth_failure_is_never_a_401(
    door_server: ServerProcess, fake: FakeAnthropic
) -> None:
    """An upstream 401 (the operator's credentials) reaches callers as 502, not 401."""
    key = door_server.create_key("sdk")
    fake.reply(Error(401, "authentication_error", "invalid x-api-key"))
    with pytest.raises(anthropic.APIStatusError) as caught:
        _anthropic(door_server, key).messages.create(
            model="sonnet", max_tokens=16, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 502
    assert not isinstance(caught.value, anthropic.AuthenticationError)


def test_sdk_count_tokens_on_both_backends(door_server: ServerProcess, fake: FakeAnthropic) -> None:
    """count_tokens answers a positive count: forwarded upstream on the API backend, an
    estimate that starts no CLI run on the CLI backend."""
    key = door_server.create_key("sdk")
    before = len(fake.requests)
    counted = _anthropic(door_server, key).messages.count_tokens(
        model="sonnet", messages=[{"role": "user", "content": "count these words " * 20}]
    )
    assert counted.input_tokens > 20
    reached_upstream = [r for r in fake.requests[before:] if "count_tokens" in r.path]
    api_backend = "CCGATE_BACKEND" in door_server.env
    assert bool(reached_upstream) is api_backend
    assert not fake.message_requests()


def test_sdk_disconnect_mid_stream_cancels_the_cli_run(
    start_server: StartServer, server_env: dict[str, str], fake: FakeAnthropic, work_dir: Path
) -> None:
    """A client that drops a /v1/messages stream stops the CLI run and cancels its job."""
    server = start_server(server_env)
    key = server.create_key("sdk")
    fake.reply(Slow("one two three four five six", delay=1.0, chunks=6))
    body = {
        "model": "sonnet",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    with httpx.Client(base_url=server.url, timeout=60, headers={"x-api-key": key}) as http:
        with http.stream("POST", "/v1/messages", json=body) as response:
            for line in response.iter_lines():
                if "text_delta" in line:
                    break
        assert wait_for_no_runs(work_dir, timeout=10) == []
        cancelled = http.get(
            "/api/v1/jobs",
            params={"status": "cancelled"},
            headers={"Authorization": f"Bearer {key}"},
        ).json()
    assert [job["status"] for job in cancelled["jobs"]] == ["cancelled"]
