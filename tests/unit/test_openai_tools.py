"""The pure OpenAI <-> Anthropic tool translation: request parsing, stream events, SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccgate.api.doors.chat import parse_chat_call
from ccgate.api.doors.chat_tools import ToolStream
from ccgate.errors import ApiError
from ccgate.runners.anthropic_sse import sse_payloads
from ccgate.runners.base import RunError

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_call = st.fixed_dictionaries(
    {},
    optional={
        "id": st.just("call_1") | _json,
        "type": st.just("function") | _json,
        "function": st.fixed_dictionaries(
            {},
            optional={
                "name": st.just("f") | _json,
                "arguments": st.sampled_from(
                    ['{"a": 1}', "", "{", "[1]", "NaN", '"\\ud800"', '{"a": "\\ud800"}']
                )
                | _json,
            },
        ),
    },
)
_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "tool", "function"]) | _json,
        "content": st.text(max_size=8) | _json,
        "tool_calls": st.lists(_call, max_size=2) | _json,
        "tool_call_id": st.just("call_1") | _json,
        "function_call": _json,
        "name": _json,
    },
)
_body = st.fixed_dictionaries(
    {"model": st.just("sonnet")},
    optional={
        "messages": st.lists(_message, max_size=4) | _json,
        "tools": st.lists(
            st.fixed_dictionaries(
                {}, optional={"type": st.just("function") | _json, "function": _json}
            ),
            max_size=2,
        )
        | _json,
        "functions": _json,
        "tool_choice": st.sampled_from(["auto", "none", "required"]) | _json,
        "function_call": _json,
        "parallel_tool_calls": _json,
    },
)


@settings(max_examples=300, deadline=None)
@given(body=_body)
def test_parse_chat_call_with_tools_fails_only_with_a_400(body: dict[str, Any]) -> None:
    """Whatever tool shapes a client sends, parsing succeeds or raises a 400 naming a field."""
    error: ApiError | None = None
    try:
        call = parse_chat_call(body, tools_allowed=True)
    except ApiError as exc:
        error = exc
    if error is not None:
        assert error.status == 400 and error.param
    else:
        assert call.content


def test_tool_stream_numbers_calls_and_routes_argument_pieces() -> None:
    """Each tool_use block gets the next tool call index; its pieces follow that index."""
    stream = ToolStream()
    events = [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
        },
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_2", "name": "g", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": "{}"},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}},
    ]
    assert [stream.delta(e) for e in events] == [
        None,
        {"content": "Hi"},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "f", "arguments": ""},
                }
            ]
        },
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "g", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
        None,
        None,
    ]


def test_tool_stream_legacy_keeps_only_the_first_call() -> None:
    """For a legacy functions request the first call streams as function_call, others drop."""
    stream = ToolStream(legacy=True)
    start = {
        "type": "content_block_start",
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
    }
    piece = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "input_json_delta", "partial_json": '{"a"'},
    }
    assert stream.delta({**start, "index": 0}) == {"function_call": {"name": "f", "arguments": ""}}
    assert stream.delta(piece) == {"function_call": {"arguments": '{"a"'}}
    assert stream.delta({**start, "index": 1}) is None
    assert stream.delta({**piece, "index": 1}) is None


async def test_sse_payloads_survive_any_chunk_boundaries() -> None:
    """Events split across chunks, CRLF lines and comments parse into the same payloads."""
    raw = (
        b'event: ping\r\ndata: {"type": "ping"}\r\n\r\n: comment\n\n'
        b'event: x\ndata: {"type": "message_stop"}\n\ndata: not json\n\n'
    )

    async def chunks(size: int) -> AsyncIterator[bytes]:
        for start in range(0, len(raw), size):
            yield raw[start : start + size]

    for size in (1, 3, 7, len(raw)):
        assert [p async for p in sse_payloads(chunks(size))] == [
            {"type": "ping"},
            {"type": "message_stop"},
            None,
        ]


async def test_sse_payloads_refuse_an_event_past_the_bound() -> None:
    """An upstream event bigger than the bound fails the stream instead of growing forever."""

    async def endless_line() -> AsyncIterator[bytes]:
        yield b"data: "
        for _ in range(100):
            yield b"x" * 1024

    with pytest.raises(RunError, match="too large"):
        _ = [p async for p in sse_payloads(endless_line(), max_event_bytes=64 * 1024)]


async def test_sse_payloads_join_a_line_cut_into_many_chunks() -> None:
    """A long data line delivered in small pieces is read whole, once."""
    payload = b'{"type": "content_block_delta", "text": "' + b"y" * 50_000 + b'"}'
    raw = b"data: " + payload + b"\n\n"

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 100):
            yield raw[start : start + 100]

    [event] = [p async for p in sse_payloads(pieces())]
    assert event["text"] == "y" * 50_000
