"""The OpenAI Responses door through the official openai SDK, in process, on both backends:
the CLI backend (a FakeRunner behind the queue) and the API backend (the fake Anthropic API)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest

from ccgate.api.deps import app_services
from ccgate.clock import utcnow
from ccgate.policy import KeyPolicy
from tests.integration.conftest import Gateway
from tests.support.clock import install_manual_clock
from tests.support.fake_anthropic import (
    Echo,
    FakeAnthropic,
    StreamError,
    Text,
    TextAndTools,
    ToolUse,
)
from tests.support.fake_runner import FakeRunner

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CITY: Any = {
    "type": "json_schema",
    "name": "city",
    "schema": {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
    },
}


def _sdk(gateway: Gateway, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=key or gateway.key,
        base_url="http://ccgate.test/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gateway.app)),
    )


async def _other_key(gateway: Gateway, **policy: Any) -> str:
    return (await app_services(gateway.app).keyring.create("other", KeyPolicy(**policy))).secret


# -- the CLI backend (jobs on the queue) ------------------------------------------------------


async def test_responses_create_string_input_answers_a_response(
    gateway_factory: Callable[..., Any],
) -> None:
    """responses.create with a string input gives output_text, usage and a resp_ id."""
    gateway = await gateway_factory(FakeRunner(reply="hello there"))
    response = await _sdk(gateway).responses.create(model="sonnet", input="hi")
    assert response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == "hello there"
    assert response.usage is not None and response.usage.total_tokens == 12


async def test_responses_message_items_and_instructions_become_the_turn(
    gateway_factory: Callable[..., Any],
) -> None:
    """instructions and system items are the system prompt; earlier items the history."""
    runner = FakeRunner()
    gateway = await gateway_factory(runner)
    await _sdk(gateway).responses.create(
        model="sonnet",
        instructions="be terse",
        input=[
            {"role": "developer", "content": "answer in French"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "answer one"},
            {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
        ],
    )
    request = runner.started[-1]
    assert request.system_prompt == "be terse\n\nanswer in French"
    assert [m["role"] for m in request.history] == ["user", "assistant"]
    assert request.content == [{"type": "text", "text": "second"}]


async def test_responses_create_stream_true_yields_deltas_and_usage(
    gateway_factory: Callable[..., Any],
) -> None:
    """create(stream=True) yields text deltas, then response.completed with usage."""
    gateway = await gateway_factory(FakeRunner(reply="abcdefgh"))
    stream = await _sdk(gateway).responses.create(model="sonnet", input="hi", stream=True)
    events = [event async for event in stream]
    assert events[0].type == "response.created"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "abcdefgh"
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage is not None
    assert events[-1].response.usage.output_tokens == 7


async def test_responses_stream_helper_gives_the_final_response_stored(
    gateway_factory: Callable[..., Any],
) -> None:
    """The SDK's responses.stream() helper accepts the events; the Response is stored."""
    gateway = await gateway_factory(FakeRunner(reply="streamed answer"))
    sdk = _sdk(gateway)
    async with sdk.responses.stream(model="sonnet", input="hi") as stream:
        final = await stream.get_final_response()
    assert final.output_text == "streamed answer"
    again = await sdk.responses.retrieve(final.id)
    assert again.output_text == "streamed answer" and again.status == "completed"


async def test_responses_retrieve_and_delete(gateway_factory: Callable[..., Any]) -> None:
    """A stored Response is retrievable until deleted; after that both are 404."""
    gateway = await gateway_factory(FakeRunner(reply="kept"))
    sdk = _sdk(gateway)
    created = await sdk.responses.create(model="sonnet", input="hi")
    retrieved = await sdk.responses.retrieve(created.id)
    assert (retrieved.id, retrieved.output_text) == (created.id, "kept")
    await sdk.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.delete(created.id)


async def test_responses_previous_response_id_sends_the_earlier_turn(
    gateway_factory: Callable[..., Any],
) -> None:
    """previous_response_id puts the stored turns before the new input (the CLI's history)."""
    runner = FakeRunner()
    gateway = await gateway_factory(runner)
    sdk = _sdk(gateway)
    first = await sdk.responses.create(model="sonnet", input="I am Ada", instructions="be kind")
    second = await sdk.responses.create(
        model="sonnet", input="who am I?", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    request = runner.started[-1]
    assert request.history == [
        {"role": "user", "content": [{"type": "text", "text": "I am Ada"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "reply: I am Ada"}]},
    ]
    assert request.system_prompt is None  # instructions are not carried over, as at OpenAI
    third = await sdk.responses.create(model="sonnet", input="and?", previous_response_id=second.id)
    assert len(runner.started[-1].history) == 4 and third.output_text == "reply: and?"


async def test_responses_expire_after_the_session_ttl_and_are_swept(
    gateway_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored Response lives CCGATE_SESSION_TTL_HOURS: then it is 404, and the queue's
    expiry sweep deletes its row."""
    clock = install_manual_clock(monkeypatch)
    gateway = await gateway_factory(FakeRunner(reply="old"), CCGATE_SESSION_TTL_HOURS="1")
    sdk = _sdk(gateway)
    created = await sdk.responses.create(model="sonnet", input="hi")
    services = app_services(gateway.app)
    assert "responses" in [name for name, _ in services.jobs.cleanups]
    assert await services.store.responses.delete_expired(utcnow()) == 0
    clock.advance(3601)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(created.id)
    assert await services.store.responses.delete_expired(utcnow()) == 1


async def test_responses_store_false_keeps_nothing(gateway_factory: Callable[..., Any]) -> None:
    """store=false: no retrieve, and a previous_response_id to it is 404."""
    gateway = await gateway_factory(FakeRunner(reply="forgotten"))
    sdk = _sdk(gateway)
    created = await sdk.responses.create(model="sonnet", input="hi", store=False)
    assert created.output_text == "forgotten"
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.responses.create(model="sonnet", input="more", previous_response_id=created.id)
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]


async def test_responses_another_keys_response_is_404(gateway_factory: Callable[..., Any]) -> None:
    """Another key cannot retrieve, delete or continue a key's Response."""
    gateway = await gateway_factory(FakeRunner(reply="mine"))
    created = await _sdk(gateway).responses.create(model="sonnet", input="hi")
    other = _sdk(gateway, await _other_key(gateway))
    with pytest.raises(openai.NotFoundError):
        await other.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        await other.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        await other.responses.create(model="sonnet", input="x", previous_response_id=created.id)
    assert (await _sdk(gateway).responses.retrieve(created.id)).output_text == "mine"


async def test_responses_json_schema_answer_is_validated(
    gateway_factory: Callable[..., Any],
) -> None:
    """text.format json_schema: a matching answer comes back as JSON, streamed or not."""
    gateway = await gateway_factory(FakeRunner(reply='```json\n{"name": "Oslo"}\n```'))
    sdk = _sdk(gateway)
    response = await sdk.responses.create(model="sonnet", input="a city", text={"format": CITY})
    assert json.loads(response.output_text) == {"name": "Oslo"}
    stream = await sdk.responses.create(
        model="sonnet", input="a city", text={"format": CITY}, stream=True
    )
    events = [event async for event in stream]
    assert events[-1].type == "response.completed"
    assert json.loads(events[-1].response.output_text) == {"name": "Oslo"}


async def test_responses_json_schema_mismatch_is_422_after_one_repair(
    gateway_factory: Callable[..., Any],
) -> None:
    """An answer that does not match even after the repair run is 422
    schema_validation_failed in the OpenAI shape."""
    runner = FakeRunner(reply="not json at all")
    gateway = await gateway_factory(runner)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await _sdk(gateway).responses.create(model="sonnet", input="a city", text={"format": CITY})
    assert caught.value.code == "schema_validation_failed"
    assert caught.value.body["raw_text"] == "not json at all"  # type: ignore[index]
    assert len(runner.started) == 2


async def test_responses_invalid_schema_is_400_before_anything_runs(
    gateway_factory: Callable[..., Any],
) -> None:
    """A text.format schema that fails its metaschema is a 400 naming text.format.schema."""
    runner = FakeRunner()
    gateway = await gateway_factory(runner)
    bad: Any = {"type": "json_schema", "name": "x", "schema": {"type": 3}}
    with pytest.raises(openai.BadRequestError) as caught:
        await _sdk(gateway).responses.create(model="sonnet", input="x", text={"format": bad})
    assert caught.value.param == "text.format.schema" and runner.started == []


async def test_responses_function_tools_are_refused_on_the_cli_backend(
    gateway_factory: Callable[..., Any],
) -> None:
    """Function tools on the CLI backend are the chat door's clear 400; nothing runs."""
    runner = FakeRunner()
    gateway = await gateway_factory(runner)
    with pytest.raises(openai.BadRequestError) as caught:
        await _sdk(gateway).responses.create(model="sonnet", input="x", tools=[WEATHER])
    assert caught.value.param == "tools" and "off by design" in caught.value.message
    assert runner.started == []


async def test_responses_limits_answer_429_in_the_openai_shape(
    gateway_factory: Callable[..., Any],
) -> None:
    """A key's rpm limit holds at this door: a 429 RateLimitError with OpenAI headers."""
    gateway = await gateway_factory(FakeRunner(reply="ok"))
    sdk = _sdk(gateway, await _other_key(gateway, rpm=1))
    first = await sdk.responses.with_raw_response.create(model="sonnet", input="hi")
    assert first.headers["x-ratelimit-limit-requests"] == "1"
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.responses.create(model="sonnet", input="hi")
    assert caught.value.code == "rpm_exceeded"
    assert "retry-after" in caught.value.response.headers


# -- the API backend (direct runs and the pass-through) ----------------------------------------


async def test_responses_api_backend_create_and_stream(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """On the API backend a Response runs against the API, streamed or not."""
    fake.reply(Text("Hello Ada"))
    fake.reply(Text("streamed", chunks=3))
    sdk = _sdk(api_gateway)
    response = await sdk.responses.create(model="sonnet", input="hi", max_output_tokens=40)
    assert response.output_text == "Hello Ada"
    assert fake.message_requests()[-1].body["max_tokens"] == 40
    async with sdk.responses.stream(model="sonnet", input="hi") as stream:
        final = await stream.get_final_response()
    assert final.output_text == "streamed" and final.usage is not None
    assert (await sdk.responses.retrieve(final.id)).output_text == "streamed"


async def test_responses_api_backend_stream_broken_midway_ends_failed(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """An upstream error inside the stream ends it with response.failed; nothing is stored."""
    fake.reply(StreamError("partial"))
    sdk = _sdk(api_gateway)
    stream = await sdk.responses.create(model="sonnet", input="hi", stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.error is not None and failed.error.code == "rate_limit_exceeded"
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(failed.id)


async def test_responses_api_backend_previous_response_id_sends_history_upstream(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """A continued Response sends the earlier turns upstream before the new one."""
    fake.reply(Text("Hello Ada"))
    fake.reply(Echo())
    sdk = _sdk(api_gateway)
    first = await sdk.responses.create(model="sonnet", input="I am Ada")
    second = await sdk.responses.create(
        model="sonnet", input="who am I?", previous_response_id=first.id
    )
    assert second.output_text == "who am I?"
    messages = fake.message_requests()[-1].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"][0]["text"] == "Hello Ada"


async def test_responses_api_backend_json_schema_repairs_once(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """On the API backend a mismatching answer gets one repair run, then validates."""
    fake.reply(Text("no JSON here"))
    fake.reply(Text('{"name": "Oslo"}'))
    response = await _sdk(api_gateway).responses.create(
        model="sonnet", input="a city", text={"format": CITY}
    )
    assert json.loads(response.output_text) == {"name": "Oslo"}
    assert len(fake.message_requests()) == 2


async def test_responses_api_backend_json_schema_failure_is_422(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """On the API backend two mismatching answers end in 422 schema_validation_failed."""
    fake.reply(Text("no JSON here"))
    fake.reply(Text("still none"))
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await _sdk(api_gateway).responses.create(
            model="sonnet", input="a city", text={"format": CITY}
        )
    assert caught.value.code == "schema_validation_failed"


async def test_responses_api_backend_function_tools_round_trip(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """Function tools go upstream as Anthropic tools; tool_use comes back as a function_call
    item, and a function_call_output continuing it reaches upstream as a tool_result."""
    fake.reply(ToolUse("get_weather", {"city": "Paris"}))
    fake.reply(Text("sunny in Paris"))
    sdk = _sdk(api_gateway)
    first = await sdk.responses.create(model="sonnet", input="Weather in Paris?", tools=[WEATHER])
    sent = fake.message_requests()[-1].body
    assert sent["tools"][0]["name"] == "get_weather"
    item = first.output[-1]
    assert item.type == "function_call" and json.loads(item.arguments) == {"city": "Paris"}
    second = await sdk.responses.create(
        model="sonnet",
        previous_response_id=first.id,
        tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": item.call_id, "output": "sunny"}],
    )
    assert second.output_text == "sunny in Paris"
    messages = fake.message_requests()[-1].body["messages"]
    assert messages[1]["content"][0]["type"] == "tool_use"
    assert messages[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": item.call_id,
        "content": "sunny",
    }


async def test_responses_api_backend_function_tools_streamed(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """Streamed, text and function calls arrive as the SDK's events and final Response."""
    fake.reply(TextAndTools("Checking.", (ToolUse("get_weather", {"city": "Rome"}),)))
    sdk = _sdk(api_gateway)
    async with sdk.responses.stream(model="sonnet", input="Rome?", tools=[WEATHER]) as stream:
        final = await stream.get_final_response()
    assert final.output_text == "Checking."
    call = final.output[-1]
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Rome"}
    assert (await sdk.responses.retrieve(final.id)).output[-1].type == "function_call"
