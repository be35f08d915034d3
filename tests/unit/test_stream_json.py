"""Parsing the CLI's stream-json output into events and errors."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from ccgate.runners.base import RunError, RunResult, RunStarted, TextDelta
from ccgate.runners.plan_windows import WindowClosed
from ccgate.runners.stream_json import StreamParser


def _line(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def _delta(text: str, parent: str | None = None) -> bytes:
    return _line(
        type="stream_event",
        parent_tool_use_id=parent,
        event={
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": text},
        },
    )


def _result(**fields: Any) -> bytes:
    base = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "result": "hi",
        "session_id": "s1",
        "usage": {"input_tokens": 3, "output_tokens": 2, "junk": "x"},
        "total_cost_usd": 0.5,
        "duration_ms": 12,
        "modelUsage": {"claude-x": {}},
    }
    base.update(fields)
    return _line(**base)


def test_parser_init_line_starts_the_run() -> None:
    """The init line yields RunStarted with the session id and model."""
    events = StreamParser(partial=True).feed(
        _line(type="system", subtype="init", session_id="s1", model="claude-x")
    )
    assert events == [RunStarted("s1", "claude-x")]


def test_parser_text_deltas_come_from_partial_messages() -> None:
    """Token deltas of the top-level message become TextDelta; sub-agent deltas do not."""
    parser = StreamParser(partial=True)
    assert parser.feed(_delta("Hel")) == [TextDelta("Hel")]
    assert parser.feed(_delta("zzz", parent="toolu_1")) == []


def test_parser_result_carries_usage_cost_and_model() -> None:
    """The result line becomes a RunResult with known usage keys only."""
    parser = StreamParser(partial=True)
    [result] = parser.feed(_result())
    assert isinstance(result, RunResult)
    assert result.text == "hi"
    assert result.usage == {"input_tokens": 3, "output_tokens": 2}
    assert (result.cost_usd, result.duration_ms, result.model) == (0.5, 12, "claude-x")


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (401, "upstream_auth_error"),
        (403, "upstream_auth_error"),
        (429, "upstream_rate_limited"),
        (529, "upstream_overloaded"),
        (500, "upstream_overloaded"),
        (400, "upstream_bad_request"),
        (413, "upstream_request_too_large"),
        (None, "cli_error"),
    ],
)
def test_parser_upstream_error_is_classified_despite_success_subtype(
    status: int | None, error_type: str
) -> None:
    """``subtype: success`` with ``is_error`` is a failure, typed by api_error_status."""
    with pytest.raises(RunError) as info:
        StreamParser(partial=True).feed(
            _result(is_error=True, api_error_status=status, result="API Error: boom")
        )
    assert info.value.error_type == error_type
    assert "boom" in info.value.message


def test_parser_skips_garbage_and_unknown_lines() -> None:
    """Non-JSON, non-object and unknown-type lines are counted and skipped."""
    parser = StreamParser(partial=True)
    for line in (b"not json", b"[1,2]", _line(type="mystery"), b"\xff\xfe"):
        assert parser.feed(line) == []
    assert parser.unparsed_lines == 3


def test_parser_without_partial_uses_the_assistant_message() -> None:
    """Without partial messages the assistant line's text arrives as one delta."""
    parser = StreamParser(partial=False)
    line = _line(
        type="assistant",
        parent_tool_use_id=None,
        message={
            "content": [
                {"type": "text", "text": "a"},
                {"type": "tool_use"},
                {"type": "text", "text": "b"},
            ]
        },
    )
    assert parser.feed(line) == [TextDelta("ab")]


def _result_error(**extra: object) -> bytes:
    line = {
        "type": "result",
        "subtype": "success",
        "is_error": True,
        "result": "You've hit your limit",
        **extra,
    }
    return json.dumps(line).encode()


def test_stream_json_usage_limit_is_a_rate_limit_with_its_reset() -> None:
    """A subscription usage limit becomes upstream_rate_limited with Retry-After from the
    reset time the CLI reported, never an auth error."""
    parser = StreamParser(partial=True)
    resets = int(time.time()) + 3600
    parser.feed(
        json.dumps(
            {
                "type": "rate_limit_event",
                "rate_limit_info": {
                    "status": "rejected",
                    "resetsAt": resets,
                    "rateLimitType": "five_hour",
                },
            }
        ).encode()
    )
    with pytest.raises(RunError) as caught:
        parser.feed(_result_error(api_error_status=403, api_error="usage_limit_reached"))
    assert caught.value.error_type == "upstream_rate_limited"
    assert caught.value.retry_after is not None
    assert 3590 <= caught.value.retry_after <= 3600


def test_stream_json_usage_limit_info_in_the_result_line() -> None:
    """The reset carried in the result's own rate_limit_info is used too."""
    resets = int(time.time()) + 120
    with pytest.raises(RunError) as caught:
        StreamParser(partial=True).feed(
            _result_error(
                api_error="usage_limit_reached",
                api_error_params={"rate_limit_info": {"status": "rejected", "resetsAt": resets}},
            )
        )
    assert caught.value.error_type == "upstream_rate_limited"
    assert caught.value.retry_after is not None and 110 <= caught.value.retry_after <= 120


def test_stream_json_allowed_rate_limit_events_change_nothing() -> None:
    """An 'allowed' rate-limit event before an ordinary failure keeps its own type."""
    parser = StreamParser(partial=True)
    parser.feed(
        json.dumps(
            {
                "type": "rate_limit_event",
                "rate_limit_info": {"status": "allowed", "resetsAt": int(time.time()) + 60},
            }
        ).encode()
    )
    with pytest.raises(RunError) as caught:
        parser.feed(_result_error(api_error_status=529))
    assert caught.value.error_type == "upstream_overloaded"


def _window_event(**params: Any) -> bytes:
    """A rate_limit_event line exactly as the fake claude prints it."""
    from tests.support.fake_claude import rate_limit_info

    return json.dumps(
        {"type": "rate_limit_event", "rate_limit_info": rate_limit_info(params)}
    ).encode()


def test_stream_json_allowed_warning_is_a_success_with_a_warning() -> None:
    """A window past its warning threshold completes the run and only adds a warning."""
    parser = StreamParser(partial=True)
    parser.feed(_window_event(status="allowed_warning", utilization=0.85))
    parser.feed(json.dumps({"type": "result", "is_error": False, "result": "ok"}).encode())
    assert parser.result is not None and parser.result.text == "ok"
    assert parser.result.warning is not None and "five_hour at 85%" in parser.result.warning
    assert [w.status for w in parser.result.plan_windows] == ["allowed_warning"]


def test_stream_json_rejected_window_closes_with_its_reset() -> None:
    """A rejected top-level status is WindowClosed, with the window's reset and its state."""
    resets = int(time.time()) + 600
    parser = StreamParser(partial=True)
    parser.feed(_window_event(status="rejected", resets_at=resets, window="seven_day"))
    with pytest.raises(WindowClosed) as caught:
        parser.feed(_result_error(api_error_status=429, error="rate_limit"))
    assert caught.value.error_type == "upstream_rate_limited"
    assert caught.value.resets_at is not None and int(caught.value.resets_at.timestamp()) == resets
    assert [w.name for w in caught.value.windows] == ["seven_day"]


def test_stream_json_rejected_side_window_alone_refuses_nothing() -> None:
    """A window listed as rejected while the top-level status is allowed (overage in use)
    does not turn an ordinary failure into a plan-window refusal."""
    parser = StreamParser(partial=True)
    parser.feed(
        _window_event(
            status="allowed",
            windows={
                "seven_day_opus": {
                    "utilization": 1.0,
                    "resetsAt": int(time.time()) + 60,
                    "status": "rejected",
                }
            },
        )
    )
    with pytest.raises(RunError) as caught:
        parser.feed(_result_error(api_error_status=400))
    assert not isinstance(caught.value, WindowClosed)
    assert caught.value.error_type == "upstream_bad_request"
