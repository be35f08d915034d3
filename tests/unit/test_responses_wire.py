"""The OpenAI Responses wire format: parsing requests, rendering Responses and their streams."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from ccgate.api.doors.responses.render import (
    ResponseStream,
    ToolCall,
    render_response,
    tool_calls_of,
)
from ccgate.api.doors.responses.request import ResponsesCall, WireError, parse_request
from ccgate.errors import ApiError

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n").decode()
PDF = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4").decode()
WEATHER = {"type": "function", "name": "weather", "parameters": {"type": "object"}}
_EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def _parse(tools_allowed: bool = False, **body: Any) -> ResponsesCall:
    return parse_request({"model": "sonnet", **body}, tools_allowed=tools_allowed)


def _refused(body: dict[str, Any], tools_allowed: bool = False) -> WireError:
    with pytest.raises(WireError) as caught:
        parse_request({"model": "sonnet", **body}, tools_allowed=tools_allowed)
    return caught.value


def _payloads(frames: Sequence[bytes]) -> list[dict[str, Any]]:
    """Each frame's data, checked against its ``event:`` line."""
    payloads = []
    for frame in frames:
        event, data, *_ = frame.decode().split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert event == f"event: {payload['type']}"
        payloads.append(payload)
    return payloads


# -- parsing ---------------------------------------------------------------------------------


def test_parse_string_input_is_one_user_turn() -> None:
    """A string input becomes the new user turn, with no earlier turns and no system text."""
    call = _parse(input="Hello")
    assert call.content == [{"type": "text", "text": "Hello"}]
    assert (call.history, call.system, call.store, call.stream) == ([], None, True, False)


def test_parse_message_items_build_history_and_system() -> None:
    """instructions come first in the system text, then system/developer items; the rest
    alternate, consecutive user messages merged."""
    call = _parse(
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Use French."},
            {"role": "user", "content": "Hi"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Salut", "annotations": []}],
            },
            {"role": "user", "content": [{"type": "input_text", "text": "Again"}]},
            {"role": "user", "content": "and again"},
        ],
    )
    assert call.system == "Be brief.\n\nUse French."
    assert call.history == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Salut"}]},
    ]
    assert call.content == [
        {"type": "text", "text": "Again"},
        {"type": "text", "text": "and again"},
    ]


def test_parse_input_image_data_url_becomes_image_block() -> None:
    """An input_image with a base64 data URL becomes an Anthropic base64 image block."""
    call = _parse(input=[{"role": "user", "content": [{"type": "input_image", "image_url": PNG}]}])
    assert call.content[0]["type"] == "image"
    assert call.content[0]["source"]["media_type"] == "image/png"


@pytest.mark.parametrize(
    ("part", "param", "words"),
    [
        ({"type": "input_image", "image_url": "https://x/y.png"}, "image_url", "does not fetch"),
        ({"type": "input_image", "file_id": "file_1"}, "image_url", "data URLs"),
        ({"type": "input_image", "image_url": "data:image/bmp;base64,AAAA"}, "media_type", "png"),
        ({"type": "input_file", "file_id": "file_1"}, "file_data", "data URLs"),
        ({"type": "input_file", "file_data": "data:text/csv;base64,AAAA"}, "file_data", "PDF"),
        (
            {"type": "input_file", "file_data": "data:application/pdf;base64,%%"},
            "file_data",
            "base64",
        ),
        ({"type": "input_audio", "data": "x"}, "type", "input_audio"),
    ],
)
def test_parse_refuses_unsupported_parts_naming_them(part: Any, param: str, words: str) -> None:
    """Remote images, file ids, other file types, bad base64 and other parts are refused."""
    error = _refused({"input": [{"role": "user", "content": [part]}]})
    assert error.param is not None and error.param.startswith("input.0.content.0")
    assert error.param.endswith(param) and words in error.message


def test_parse_input_file_pdf_becomes_document_block() -> None:
    """An input_file with a PDF data URL becomes a base64 document block titled by filename."""
    part = {"type": "input_file", "file_data": PDF, "filename": "a.pdf"}
    call = _parse(input=[{"role": "user", "content": [part]}])
    assert call.content == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": PDF[28:]},
            "title": "a.pdf",
        }
    ]


def test_parse_function_call_items_become_tool_use_and_result() -> None:
    """function_call and function_call_output items become tool_use and tool_result blocks."""
    call = _parse(
        tools_allowed=True,
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "Weather?"},
            {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ],
    )
    assert call.history[1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "call_1", "name": "weather", "input": {}}],
    }
    assert call.content == [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [WEATHER]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input"),
    ],
)
def test_parse_refuses_tools_on_the_cli_backend(body: dict[str, Any], param: str) -> None:
    """Without tools allowed, tools, tool_choice and tool items are a clear 400."""
    error = _refused({"input": "hi", **body})
    assert error.param == param and "CCGATE_BACKEND=api" in error.message


def test_parse_translates_function_tools_to_anthropic() -> None:
    """Function tools become Anthropic tools; required is any; parallel off is passed on."""
    tool = {**WEATHER, "description": "Look it up", "strict": True}
    call = _parse(True, input="hi", tools=[tool], tool_choice="required", parallel_tool_calls=False)
    assert call.tools == {
        "tools": [
            {"name": "weather", "description": "Look it up", "input_schema": {"type": "object"}}
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    }
    assert call.echo["tools"] == [{**tool, "description": "Look it up"}]
    assert call.echo["parallel_tool_calls"] is False


def test_parse_named_tool_choice_becomes_tool_choice_tool() -> None:
    """{type: function, name} picks that tool; a name that is not a tool is refused."""
    call = _parse(
        True, input="hi", tools=[WEATHER], tool_choice={"type": "function", "name": "weather"}
    )
    assert call.tools is not None
    assert call.tools["tool_choice"] == {"type": "tool", "name": "weather"}
    error = _refused(
        {"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "x"}}, True
    )
    assert error.param == "tool_choice.name"


def test_parse_refuses_other_tool_types_naming_them() -> None:
    """A hosted tool such as web_search is refused with its type named."""
    error = _refused({"input": "hi", "tools": [{"type": "web_search"}]}, True)
    assert error.param == "tools.0.type" and "'web_search'" in error.message


def test_parse_json_schema_format_is_checked_and_kept() -> None:
    """text.format json_schema keeps the checked schema and asks for JSON only."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    call = _parse(input="hi", text={"format": fmt})
    assert (call.json_schema, call.json_only) == (schema, True)
    assert call.echo["text"] == {"format": fmt}


@pytest.mark.parametrize(
    ("text", "param"),
    [
        (
            {"format": {"type": "json_schema", "name": "x", "schema": {"type": 3}}},
            "text.format.schema",
        ),
        ({"format": {"type": "json_schema", "name": 1, "schema": {}}}, "text.format.name"),
        ({"format": {"type": "yaml"}}, "text.format.type"),
        ("json", "text"),
    ],
)
def test_parse_refuses_bad_text_formats(text: Any, param: str) -> None:
    """A schema that fails its metaschema, a bad name or an unknown format type is refused."""
    assert _refused({"input": "hi", "text": text}).param == param


def test_parse_json_object_format_asks_for_json_without_schema() -> None:
    """text.format json_object asks for JSON only, with no schema."""
    call = _parse(input="hi", text={"format": {"type": "json_object"}})
    assert (call.json_only, call.json_schema) == (True, None)


def test_parse_reads_sampling_length_and_storage_fields() -> None:
    """max_output_tokens, temperature (capped at 1 for the run), top_p, store, metadata,
    previous_response_id and stream are read; the echo keeps the temperature asked for."""
    call = _parse(
        input=[{"role": "assistant", "content": "earlier"}, {"role": "user", "content": "hi"}],
        max_output_tokens=50,
        temperature=1.5,
        top_p=0.5,
        store=False,
        metadata={"team": "a"},
        previous_response_id="resp_1",
        stream=True,
        reasoning={"effort": "high"},
        include=["reasoning.encrypted_content"],
        some_future_field=1,
    )
    assert (call.max_tokens, call.temperature, call.top_p) == (50, 1.0, 0.5)
    assert (call.store, call.metadata, call.previous_response_id, call.stream) == (
        False,
        {"team": "a"},
        "resp_1",
        True,
    )
    assert call.echo["temperature"] == 1.5 and call.echo["reasoning"] is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": ""}, "model"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": True}, "top_p"),
        ({"store": "yes"}, "store"),
        ({"stream": 1}, "stream"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"truncation": "middle"}, "truncation"),
        ({"include": "all"}, "include"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input.0.type"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role"),
        (
            {"input": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            "input",
        ),
        (
            {"input": [{"role": "assistant", "content": "b"}, {"role": "user", "content": "a"}]},
            "input",
        ),
    ],
)
def test_parse_refuses_bad_fields_naming_them(body: dict[str, Any], param: str) -> None:
    """Each invalid or unsupported field is a WireError naming it."""
    assert _refused({"input": "hi", **body}).param == param


def test_wire_error_is_an_invalid_request() -> None:
    """A WireError is the catalogue's invalid_request, a 400 the door renders as is."""
    error = WireError("input: bad", "input")
    assert isinstance(error, ApiError) and error.status == 400
    assert (error.error_type, error.param) == ("invalid_request", "input")


def test_continued_puts_the_stored_turns_first() -> None:
    """continued prepends the previous response's turns, merging at the seam."""
    call = _parse(
        previous_response_id="resp_1",
        input=[{"role": "assistant", "content": "and more"}, {"role": "user", "content": "ok"}],
    )
    stored = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
    ]
    whole = call.continued(stored)
    assert [t["role"] for t in whole.history] == ["user", "assistant"]
    assert [b["text"] for b in whole.history[1]["content"]] == ["hello", "and more"]
    assert whole.content == [{"type": "text", "text": "ok"}]


def test_continued_refuses_a_conversation_starting_with_the_assistant() -> None:
    """Stored turns that leave the assistant first are refused, naming previous_response_id."""
    call = _parse(
        previous_response_id="resp_1",
        input=[{"role": "assistant", "content": "b"}, {"role": "user", "content": "a"}],
    )
    with pytest.raises(WireError) as caught:
        call.continued([])
    assert caught.value.param == "previous_response_id"


def test_parse_takes_a_rendered_output_back_as_input() -> None:
    """A Response's output items, sent back as input with a new user message, parse as turns
    (the manual way to carry a conversation without previous_response_id)."""
    earlier = render_response(
        _parse(True, input="hi", tools=[WEATHER]),
        response_id="resp_1",
        created_at=1,
        text="Checking",
        tool_calls=[ToolCall("toolu_1", "weather", '{"city": "Oslo"}')],
    )
    call = _parse(
        True,
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "hi"},
            *earlier["output"],
            {"type": "function_call_output", "call_id": "toolu_1", "output": "sunny"},
        ],
    )
    assert call.history[1]["content"] == [
        {"type": "text", "text": "Checking"},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
    ]
    [result] = call.content
    assert result["type"] == "tool_result" and result["tool_use_id"] == "toolu_1"


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["model", "input", "tools", "tool_choice", "text", "metadata", "store"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=6),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(
                        ["type", "role", "content", "name", "text", "format", "call_id"]
                    ),
                    inner,
                    max_size=3,
                )
            ),
            max_leaves=10,
        ),
    )
)
def test_parse_any_body_gives_a_call_or_a_wire_error(body: dict[str, Any]) -> None:
    """Whatever the body, parse_request returns a call or raises WireError, nothing else."""
    with contextlib.suppress(WireError):
        parse_request(body, tools_allowed=True)


# -- rendering -------------------------------------------------------------------------------


def test_render_text_answer_validates_with_the_sdk() -> None:
    """A text answer renders as a Response the SDK accepts, with output_text and usage
    counting cache reads and writes as input."""
    usage = {
        "input_tokens": 5,
        "cache_read_input_tokens": 3,
        "cache_creation_input_tokens": 2,
        "output_tokens": 4,
    }
    body = render_response(
        _parse(input="hi", instructions="Be brief."),
        response_id="resp_1",
        created_at=1700000000,
        text="Hello",
        usage=usage,
    )
    response = Response.model_validate(body)
    assert (response.output_text, response.status, response.instructions) == (
        "Hello",
        "completed",
        "Be brief.",
    )
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.total_tokens) == (10, 14)
    assert response.usage.input_tokens_details.cached_tokens == 3
    assert "output_text" not in body


def test_render_function_calls_validate_with_the_sdk() -> None:
    """Tool use blocks render as function_call items with call id, name and JSON arguments."""
    text, calls = tool_calls_of(
        [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}]
    )
    body = render_response(
        _parse(True, input="hi", tools=[WEATHER]),
        response_id="resp_1",
        created_at=1,
        text=text,
        tool_calls=calls,
        stop_reason="tool_use",
    )
    item = Response.model_validate(body).output[0]
    assert item.type == "function_call"
    assert (item.call_id, item.name, json.loads(item.arguments)) == (
        "toolu_1",
        "weather",
        {"city": "Oslo"},
    )


def test_render_json_schema_format_validates_with_the_sdk() -> None:
    """The text.format json_schema echo is the shape the SDK's Response reads."""
    fmt = {"type": "json_schema", "name": "thing", "schema": {"type": "object"}, "strict": True}
    body = render_response(
        _parse(input="hi", text={"format": fmt}), response_id="resp_1", created_at=1, text="{}"
    )
    response = Response.model_validate(body)
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"


def test_render_max_tokens_stop_is_incomplete() -> None:
    """An answer cut at max_tokens is incomplete, with reason max_output_tokens."""
    body = render_response(
        _parse(input="hi"), response_id="resp_1", created_at=1, text="Hel", stop_reason="max_tokens"
    )
    response = Response.model_validate(body)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def test_render_error_is_failed_with_an_sdk_error_code() -> None:
    """A failed turn renders status failed with a code from the SDK's list and ccgate's type."""
    from ccgate.api.doors.responses.render import error_of

    body = render_response(
        _parse(input="hi"),
        response_id="resp_1",
        created_at=1,
        error=error_of("upstream_rate_limited", "slow down"),
    )
    response = Response.model_validate(body)
    assert response.status == "failed" and response.error is not None
    assert (response.error.code, response.error.type) == (
        "rate_limit_exceeded",
        "upstream_rate_limited",
    )


# -- streaming -------------------------------------------------------------------------------


def _stream(**body: Any) -> ResponseStream:
    return ResponseStream(_parse(True, input="hi", **body), response_id="resp_1", created_at=1)


def test_stream_sends_events_in_sdk_order_numbered_from_zero() -> None:
    """A text answer streams created ... completed, every event valid and numbered 0, 1, ..."""
    stream = _stream()
    frames = [
        *stream.start(),
        *stream.text("Hel"),
        *stream.text("lo"),
        *stream.finish(usage={"output_tokens": 2}),
    ]
    payloads = _payloads(frames)
    events = [_EVENTS.validate_python(p) for p in payloads]
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == "Hello"
    assert events[-1].response.usage.output_tokens == 2


def test_stream_finish_sends_text_the_deltas_missed() -> None:
    """finish with the run's whole text sends the part no delta carried."""
    stream = _stream()
    stream.start()
    stream.text("Hel")
    payloads = _payloads(stream.finish(text="Hello"))
    assert payloads[0]["type"] == "response.output_text.delta" and payloads[0]["delta"] == "lo"
    assert stream.response["output"][0]["content"][0]["text"] == "Hello"


def test_stream_feeds_anthropic_tool_use_events_as_function_call_events() -> None:
    """Anthropic text and tool_use stream events become a message then a function_call item."""
    stream = _stream(tools=[WEATHER])
    frames = [*stream.start()]
    for event in [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Let me"},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"city":'},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'},
        },
        {"type": "content_block_stop", "index": 1},
    ]:
        frames += stream.anthropic_event(event)
    frames += stream.finish(stop_reason="tool_use")
    events = [_EVENTS.validate_python(p) for p in _payloads(frames)]
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and done[0].arguments == '{"city":"Oslo"}' and done[0].output_index == 1
    final = events[-1].response
    assert [item.type for item in final.output] == ["message", "function_call"]
    assert final.output[1].call_id == "toolu_1"


def test_stream_fail_sends_response_failed_with_the_error() -> None:
    """A failure mid-stream closes the open message as incomplete and sends response.failed."""
    stream = _stream()
    stream.start()
    stream.text("Hel")
    events = [_EVENTS.validate_python(p) for p in _payloads(stream.fail("timeout", "too slow"))]
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.message == "too slow"
    assert events[-1].response.output[0].status == "incomplete"


def test_stream_max_tokens_ends_with_response_incomplete() -> None:
    """An answer cut at max_tokens ends with response.incomplete instead of completed."""
    stream = _stream()
    stream.start()
    payloads = _payloads(stream.finish(text="Hel", stop_reason="max_tokens"))
    assert payloads[-1]["type"] == "response.incomplete"
    assert payloads[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_stream_error_event_validates_with_the_sdk() -> None:
    """A bare error event carries message, code and param."""
    event = _EVENTS.validate_python(_payloads([_stream().error("boom", "server_error")])[0])
    assert (event.type, event.message, event.code) == ("error", "boom", "server_error")


# -- the official SDK against these frames ---------------------------------------------------


def _client(answer: Callable[[ResponsesCall], tuple[str, list[ToolCall]]]) -> openai.OpenAI:
    """An SDK client whose transport parses each request and renders the answer."""

    def handle(request: httpx2.Request) -> httpx2.Response:
        call = parse_request(json.loads(request.content), tools_allowed=True)
        text, calls = answer(call)
        usage = {"input_tokens": 7, "output_tokens": 3}
        if not call.stream:
            body = render_response(
                call, response_id="resp_1", created_at=1, text=text, tool_calls=calls, usage=usage
            )
            return httpx2.Response(200, json=body)
        stream = ResponseStream(call, response_id="resp_1", created_at=1)
        frames = [*stream.start(), *stream.text(text[:2]), *stream.text(text[2:])]
        for one in calls:
            frames += stream.tool_call(one)
        frames += stream.finish(usage=usage)
        headers = {"content-type": "text/event-stream"}
        return httpx2.Response(200, headers=headers, content=b"".join(frames))

    transport = httpx2.MockTransport(handle)
    return openai.OpenAI(
        api_key="test",
        base_url="http://ccgate.test/v1",
        http_client=httpx2.Client(transport=transport),
    )


def _says(text: str) -> Callable[[ResponsesCall], tuple[str, list[ToolCall]]]:
    return lambda call: (text, [])


def test_sdk_create_reads_output_text_and_usage() -> None:
    """client.responses.create, not streamed, gives output_text and usage."""
    response = _client(_says("Hello there")).responses.create(model="sonnet", input="hi")
    assert response.output_text == "Hello there"
    assert response.usage is not None and response.usage.total_tokens == 10


def test_sdk_create_streamed_yields_deltas_and_completed() -> None:
    """client.responses.create(stream=True) yields the deltas and a completed Response."""
    client = _client(_says("Hello there"))
    events = list(client.responses.create(model="sonnet", input="hi", stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "Hello there" and events[-1].type == "response.completed"
    assert events[-1].response.usage is not None
    assert events[-1].response.usage.output_tokens == 3


def test_sdk_stream_helper_accumulates_the_final_response() -> None:
    """client.responses.stream, the SDK's strictest reader, accepts the event sequence."""
    client = _client(_says("Hello there"))
    with client.responses.stream(model="sonnet", input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Hello there"


def test_sdk_parse_with_a_pydantic_format_reads_the_parsed_answer() -> None:
    """client.responses.parse sends a json_schema format that ccgate accepts and the SDK reads
    the answer back as the model."""

    class City(BaseModel):
        name: str
        people: int

    seen: list[ResponsesCall] = []

    def answer(call: ResponsesCall) -> tuple[str, list[ToolCall]]:
        seen.append(call)
        return '{"name": "Oslo", "people": 700000}', []

    parsed = _client(answer).responses.parse(model="sonnet", input="hi", text_format=City)
    assert parsed.output_parsed == City(name="Oslo", people=700000)
    assert seen[0].json_schema is not None and seen[0].json_schema["type"] == "object"


def test_sdk_function_call_round_trip_streamed_and_not() -> None:
    """A function call reaches the SDK as a function_call item, streamed or not."""
    call = ToolCall("call_1", "weather", '{"city": "Oslo"}')
    client = _client(lambda _: ("", [call]))
    tools: Any = [WEATHER]
    plain = client.responses.create(model="sonnet", input="hi", tools=tools)
    with client.responses.stream(model="sonnet", input="hi", tools=tools) as stream:
        streamed = stream.get_final_response()
    for response in (plain, streamed):
        item = response.output[-1]
        assert item.type == "function_call" and item.call_id == "call_1"
        assert json.loads(item.arguments) == {"city": "Oslo"}
