"""OpenAI tool calling on the API backend, through the official openai SDK, in process."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai
import pytest

from ccgate.api.deps import app_services
from ccgate.policy import KeyPolicy
from tests.integration.conftest import Gateway
from tests.support.fake_anthropic import (
    Error,
    FakeAnthropic,
    StreamError,
    Text,
    TextAndTools,
    ToolUse,
)

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ASK: Any = [{"role": "user", "content": "Weather in Paris?"}]


def _sdk(gateway: Gateway, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=key or gateway.key,
        base_url="http://ccgate.test/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gateway.app)),
    )


def _sent(fake: FakeAnthropic) -> dict[str, Any]:
    body: dict[str, Any] = fake.message_requests()[-1].body
    return body


async def test_openai_tools_reach_upstream_in_anthropic_form(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """tools, tool_choice and parallel_tool_calls go upstream as Anthropic tools."""
    fake.reply(Text("no tool needed"))
    completion = await _sdk(api_gateway).chat.completions.create(
        model="sonnet",
        messages=[{"role": "system", "content": "be brief"}, *ASK],
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=64,
    )
    assert completion.choices[0].message.content == "no tool needed"
    body = _sent(fake)
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": WEATHER["function"]["parameters"],
        }
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert (body["model"], body["max_tokens"], body["stream"]) == ("claude-sonnet-5-5", 64, False)
    assert body["system"] == "be brief"
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}
    ]


async def test_openai_tools_tool_use_answer_is_tool_calls(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """A tool_use answer comes back as message.tool_calls with finish_reason tool_calls."""
    fake.reply(ToolUse("get_weather", {"city": "Paris"}))
    completion = await _sdk(api_gateway).chat.completions.create(
        model="sonnet", messages=ASK, tools=[WEATHER]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("toolu_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert completion.usage is not None and completion.usage.completion_tokens == 20


async def test_openai_tools_text_and_several_calls_in_one_answer(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """Text blocks become content and each tool_use block its own tool call, in order."""
    fake.reply(
        TextAndTools(
            "Checking both.",
            (ToolUse("get_weather", {"city": "Paris"}), ToolUse("get_weather", {"city": "Rome"})),
        )
    )
    completion = await _sdk(api_gateway).chat.completions.create(
        model="sonnet", messages=ASK, tools=[WEATHER]
    )
    message = completion.choices[0].message
    assert message.content == "Checking both."
    calls = message.tool_calls or []
    functions = [c.function for c in calls if c.type == "function"]
    assert len(functions) == len(calls)
    assert [json.loads(f.arguments)["city"] for f in functions] == ["Paris", "Rome"]
    assert len({c.id for c in calls}) == 2


async def test_openai_tools_follow_up_sends_tool_use_and_tool_result(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """Assistant tool_calls and tool messages reach upstream as tool_use and tool_result."""
    fake.reply(Text("Sunny in Paris, rainy in Rome."))
    calls: Any = [
        {
            "id": f"call_{city}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
        }
        for city in ("Paris", "Rome")
    ]
    completion = await _sdk(api_gateway).chat.completions.create(
        model="sonnet",
        tools=[WEATHER],
        messages=[
            *ASK,
            {"role": "assistant", "content": "Checking.", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_Paris", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_Rome", "content": "rainy"},
        ],
    )
    assert completion.choices[0].finish_reason == "stop"
    messages = _sent(fake)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_Paris", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_Rome", "name": "get_weather", "input": {"city": "Rome"}},
    ]
    assert messages[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_Paris", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "call_Rome", "content": "rainy"},
    ]


async def test_openai_tools_stream_assembles_the_calls(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """Streamed tool calls accumulate (by index) into the same calls as the whole answer."""
    fake.reply(
        TextAndTools(
            "Checking.",
            (ToolUse("get_weather", {"city": "Paris"}), ToolUse("get_weather", {"city": "Rome"})),
            parts=4,
        )
    )
    stream = await _sdk(api_gateway).chat.completions.create(
        model="sonnet",
        messages=ASK,
        tools=[WEATHER],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "Checking."
    calls: dict[int, dict[str, str]] = {}
    for part in (p for d in deltas for p in d.tool_calls or []):
        call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
        call["id"] += part.id or ""
        call["name"] += part.function.name or "" if part.function else ""
        call["arguments"] += part.function.arguments or "" if part.function else ""
    assert [json.loads(c["arguments"]) for c in calls.values()] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]
    assert all(c["id"].startswith("toolu_") and c["name"] == "get_weather" for c in calls.values())
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 30


async def test_openai_tools_bad_arguments_is_400_naming_the_field(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """An assistant tool call whose arguments are not JSON is a 400 naming that field."""
    bad_call: Any = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{city: Paris"},
    }
    with pytest.raises(openai.BadRequestError) as caught:
        await _sdk(api_gateway).chat.completions.create(
            model="sonnet",
            tools=[WEATHER],
            messages=[
                *ASK,
                {"role": "assistant", "content": None, "tool_calls": [bad_call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
        )
    param = "messages.1.tool_calls.0.function.arguments"
    assert caught.value.body["param"] == param  # type: ignore[index]
    assert param in caught.value.message
    assert fake.message_requests() == []


@pytest.mark.parametrize(
    ("choice", "parallel", "sent"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, None, None),
    ],
)
async def test_openai_tools_tool_choice_mappings(
    api_gateway: Gateway,
    fake: FakeAnthropic,
    choice: Any,
    parallel: bool | None,
    sent: dict[str, Any] | None,
) -> None:
    """Each OpenAI tool_choice (and parallel_tool_calls: false) maps to its Anthropic one."""
    fake.reply(Text("ok"))
    body: dict[str, Any] = {"model": "sonnet", "messages": ASK, "tools": [WEATHER]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    response = await api_gateway.client.post(
        "/v1/chat/completions", json=body, headers=api_gateway.auth()
    )
    assert response.status_code == 200
    assert _sent(fake).get("tool_choice") == sent


async def test_openai_tools_unknown_tool_choice_is_400(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """Forcing a tool the request does not define is a 400 naming tool_choice."""
    response = await api_gateway.client.post(
        "/v1/chat/completions",
        json={
            "model": "sonnet",
            "messages": ASK,
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "launch"}},
        },
        headers=api_gateway.auth(),
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tool_choice"
    assert fake.message_requests() == []


async def test_openai_tools_legacy_functions_answer_function_call(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """Legacy functions/function_call map to tools and come back as message.function_call."""
    fake.reply(ToolUse("get_weather", {"city": "Oslo"}))
    completion = await _sdk(api_gateway).chat.completions.create(
        model="sonnet",
        messages=ASK,
        functions=[WEATHER["function"]],
        function_call={"name": "get_weather"},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.function_call is not None
    assert json.loads(choice.message.function_call.arguments) == {"city": "Oslo"}
    assert _sent(fake)["tool_choice"] == {
        "type": "tool",
        "name": "get_weather",
        "disable_parallel_tool_use": True,
    }


async def test_openai_tools_legacy_function_message_answers_the_call(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """A legacy function message becomes the tool_result of the function_call before it."""
    fake.reply(Text("Cold in Oslo."))
    await _sdk(api_gateway).chat.completions.create(
        model="sonnet",
        functions=[WEATHER["function"]],
        messages=[
            *ASK,
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            },
            {"role": "function", "name": "get_weather", "content": "-3 C"},
        ],
    )
    assistant, results = _sent(fake)["messages"][1:]
    [use] = assistant["content"]
    assert (use["type"], use["name"], use["input"]) == ("tool_use", "get_weather", {"city": "Oslo"})
    assert results["content"] == [
        {"type": "tool_result", "tool_use_id": use["id"], "content": "-3 C"}
    ]


async def test_openai_tools_upstream_error_before_stream_frees_the_slot(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """An upstream 429 is a RateLimitError; the key's only concurrency slot is free again."""
    single = await app_services(api_gateway.app).keyring.create("single", KeyPolicy(concurrency=1))
    sdk = _sdk(api_gateway, single.secret)
    fake.reply(Error(429, "rate_limit_error", "slow down", retry_after=7))
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.chat.completions.create(
            model="sonnet", messages=ASK, tools=[WEATHER], stream=True
        )
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body["code"] == "upstream_rate_limited"  # type: ignore[index]
    fake.reply(ToolUse("get_weather", {"city": "Paris"}))
    stream = await sdk.chat.completions.create(
        model="sonnet", messages=ASK, tools=[WEATHER], stream=True
    )
    assert [c async for c in stream][-1].choices[0].finish_reason == "tool_calls"
    again = await sdk.chat.completions.create(model="sonnet", messages=ASK, tools=[WEATHER])
    assert again.choices[0].finish_reason == "stop"


async def test_openai_tools_error_inside_the_stream_ends_it_with_an_error(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """An error event mid-stream becomes an OpenAI error payload; no [DONE] follows."""
    fake.reply(StreamError("partial answer"))
    response = await api_gateway.client.post(
        "/v1/chat/completions",
        json={"model": "sonnet", "messages": ASK, "tools": [WEATHER], "stream": True},
        headers=api_gateway.auth(),
    )
    assert response.status_code == 200
    payloads = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    content = "".join(
        json.loads(p)["choices"][0]["delta"].get("content") or "" for p in payloads[:-1]
    )
    assert content == "partial answer"
    assert json.loads(payloads[-1])["error"]["code"] == "upstream_overloaded"
