"""Turning the CLI's stream-json lines into RunEvents, and its failures into RunErrors."""

from __future__ import annotations

import json
from typing import Any

from ccgate.runners.base import RunError, RunEvent, RunResult, RunStarted, TextDelta

_USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


class StreamParser:
    """Feed it stdout lines one at a time; it returns the events each line carries."""

    def __init__(self, *, partial: bool) -> None:
        self.partial = partial
        self.result: RunResult | None = None
        self.unparsed_lines = 0
        self._model: str | None = None

    def feed(self, line: bytes) -> list[RunEvent]:
        """Parse one line; unknown or malformed lines are counted and skipped."""
        try:
            message = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            self.unparsed_lines += 1
            return []
        if not isinstance(message, dict):
            self.unparsed_lines += 1
            return []
        kind = message.get("type")
        if kind == "system" and message.get("subtype") == "init":
            self._model = _str_or_none(message.get("model"))
            return [RunStarted(_str_or_none(message.get("session_id")), self._model)]
        if kind == "stream_event" and self.partial and message.get("parent_tool_use_id") is None:
            return _stream_event_delta(message.get("event"))
        if kind == "assistant" and not self.partial and message.get("parent_tool_use_id") is None:
            return _assistant_text(message.get("message"))
        if kind == "result":
            self.result = result_from_line(message, self._model)
            return [self.result]
        return []


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _stream_event_delta(event: Any) -> list[RunEvent]:
    if not isinstance(event, dict) or event.get("type") != "content_block_delta":
        return []
    delta = event.get("delta")
    if isinstance(delta, dict) and delta.get("type") == "text_delta":
        text = delta.get("text")
        if isinstance(text, str) and text:
            return [TextDelta(text)]
    return []


def _assistant_text(message: Any) -> list[RunEvent]:
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return []
    parts = [
        block["text"]
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    ]
    return [TextDelta("".join(parts))] if parts else []


def result_from_line(line: dict[str, Any], model: str | None) -> RunResult:
    """Build the RunResult of a ``result`` line, or raise the RunError it reports.

    The CLI reports upstream failures with ``subtype: "success"`` and ``is_error: true``,
    so only ``is_error`` and ``api_error_status`` are trusted.
    """
    text = line.get("result")
    text = text if isinstance(text, str) else ""
    if line.get("is_error"):
        status = line.get("api_error_status")
        raise classify_upstream_error(status if isinstance(status, int) else None, text,
                                      _str_or_none(line.get("terminal_reason")))
    usage_raw = line.get("usage")
    if not isinstance(usage_raw, dict):
        usage_raw = {}
    usage = {k: int(v) for k, v in usage_raw.items() if k in _USAGE_KEYS and isinstance(v, int)}
    model_usage = line.get("modelUsage")
    if isinstance(model_usage, dict) and len(model_usage) == 1:
        model = next(iter(model_usage))
    cost = line.get("total_cost_usd")
    duration = line.get("duration_ms")
    return RunResult(
        text=text,
        session_id=_str_or_none(line.get("session_id")),
        model=model,
        usage=usage,
        cost_usd=float(cost) if isinstance(cost, int | float) else None,
        duration_ms=int(duration) if isinstance(duration, int | float) else None,
        stop_reason=_str_or_none(line.get("stop_reason")),
    )


def classify_upstream_error(status: int | None, text: str, reason: str | None) -> RunError:
    """Map a failed result line to the documented error type a client can act on."""
    detail = text.strip()[:500] or "no detail given"
    if status in (401, 403):
        return RunError("upstream_auth_error",
                        "The claude CLI is not logged in or its API key is invalid "
                        f"(upstream {status}): {detail}", upstream_status=status)
    if status == 429:
        return RunError("upstream_rate_limited",
                        f"The upstream API rate-limited this account (429): {detail}",
                        upstream_status=status)
    if status is not None and (status >= 500 or status == 529):
        return RunError("upstream_overloaded",
                        f"The upstream API is overloaded or unavailable ({status}): {detail}",
                        upstream_status=status)
    if status == 413:
        return RunError("upstream_request_too_large",
                        f"The upstream API refused the request as too large (413): {detail}",
                        upstream_status=status)
    if status is not None and 400 <= status < 500:
        return RunError("upstream_bad_request",
                        f"The upstream API refused the request ({status}): {detail}",
                        upstream_status=status)
    return RunError("cli_error", f"The claude CLI reported an error ({reason or 'unknown'}): "
                    f"{detail}")
