"""Turning the CLI's stream-json lines into RunEvents, and its failures into RunErrors."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ccgate.clock import utcnow
from ccgate.runners.base import RunError, RunEvent, RunResult, RunStarted, TextDelta
from ccgate.runners.plan_windows import PlanWindow, WindowClosed, refusing, windows_from_info

_USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


class StreamParser:
    """Feed it stdout lines one at a time; it returns the events each line carries."""

    def __init__(self, *, partial: bool, clock: Callable[[], datetime] = utcnow) -> None:
        self.partial = partial
        self.clock = clock
        self.result: RunResult | None = None
        self.unparsed_lines = 0
        self._model: str | None = None
        # The last rate-limit state the CLI reported (its ``rate_limit_event`` lines).
        self._rate_limit: dict[str, Any] | None = None
        # Every plan window reported so far, by name, the latest report winning.
        self.windows: dict[str, PlanWindow] = {}

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
        if kind == "rate_limit_event" and isinstance(message.get("rate_limit_info"), dict):
            self._rate_limit = message["rate_limit_info"]
            self._note_windows(message["rate_limit_info"])
            return []
        if kind == "result":
            info = _rate_limit_info(message)
            if info is not None:
                self._note_windows(info)
            self.result = result_from_line(
                message,
                self._model,
                self._rate_limit,
                windows=tuple(self.windows.values()),
                now=self.clock(),
            )
            return [self.result]
        return []

    def _note_windows(self, info: dict[str, Any]) -> None:
        for window in windows_from_info(info, self.clock()):
            self.windows[window.name] = window


def _rate_limit_info(line: dict[str, Any]) -> dict[str, Any] | None:
    params = line.get("api_error_params")
    info = params.get("rate_limit_info") if isinstance(params, dict) else None
    return info if isinstance(info, dict) else None


def _seconds_until(moment: datetime | None, now: datetime) -> float | None:
    """Seconds from ``now`` until ``moment``, at least 1; None when unknown."""
    if moment is None:
        return None
    return max(1.0, (moment - now).total_seconds())


def _warning(windows: tuple[PlanWindow, ...]) -> str | None:
    """A short note naming the windows that passed a warning threshold, or None."""
    near = [w for w in windows if w.status == "allowed_warning"]
    if not near:
        return None
    parts = []
    for window in near:
        used = f" at {window.utilization:.0%}" if window.utilization is not None else ""
        resets = f", resets {window.resets_at.isoformat()}" if window.resets_at else ""
        parts.append(f"{window.name}{used}{resets}")
    return "plan window near its limit: " + "; ".join(parts)


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
        if isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    ]
    return [TextDelta("".join(parts))] if parts else []


def result_from_line(
    line: dict[str, Any],
    model: str | None,
    rate_limit: dict[str, Any] | None = None,
    *,
    windows: tuple[PlanWindow, ...] = (),
    now: datetime | None = None,
) -> RunResult:
    """Build the RunResult of a ``result`` line, or raise the RunError it reports.

    The CLI reports upstream failures with ``subtype: "success"`` and ``is_error: true``,
    so only ``is_error``, ``api_error_status`` and ``api_error`` are trusted. A subscription
    usage limit (``api_error: usage_limit_reached``, or a ``rate_limit_event`` whose top-level
    status is ``rejected``) is a rate limit whatever status came with it: WindowClosed, with
    Retry-After from its reset time. ``allowed_warning`` is never an error.
    """
    now = now or utcnow()
    text = line.get("result")
    text = text if isinstance(text, str) else ""
    if line.get("is_error"):
        status = line.get("api_error_status")
        status = status if isinstance(status, int) else None
        info = _rate_limit_info(line) or rate_limit
        closed = line.get("api_error") == "usage_limit_reached" or refusing(info)
        limited = closed or line.get("error") == "rate_limit"
        if limited and (status is None or status < 500):
            status = 429
        error = classify_upstream_error(status, text, _str_or_none(line.get("terminal_reason")))
        if error.error_type == "upstream_rate_limited" and closed:
            resets_at = _closing_reset(windows, info, now)
            raise WindowClosed(
                error.message,
                resets_at=resets_at,
                retry_after=_seconds_until(resets_at, now),
                windows=windows,
            )
        raise error
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
        plan_windows=windows,
        warning=_warning(windows),
    )


def _closing_reset(
    windows: tuple[PlanWindow, ...], info: dict[str, Any] | None, now: datetime
) -> datetime | None:
    """When the refusal ends: the reset of the limiting window, else the latest reset of the
    windows seen rejected."""
    if info is not None:
        for window in windows_from_info(info, now)[:1]:
            if window.resets_at is not None:
                return window.resets_at
    resets = [w.resets_at for w in windows if w.closed_at(now) and w.resets_at is not None]
    return max(resets) if resets else None


def classify_upstream_error(status: int | None, text: str, reason: str | None) -> RunError:
    """Map a failed result line to the documented error type a client can act on."""
    detail = text.strip()[:500] or "no detail given"
    if status in (401, 403):
        return RunError(
            "upstream_auth_error",
            "The claude CLI is not logged in or its API key is invalid "
            f"(upstream {status}): {detail}",
            upstream_status=status,
        )
    if status == 429:
        return RunError(
            "upstream_rate_limited",
            f"The upstream API rate-limited this account (429): {detail}",
            upstream_status=status,
        )
    if status is not None and (status >= 500 or status == 529):
        return RunError(
            "upstream_overloaded",
            f"The upstream API is overloaded or unavailable ({status}): {detail}",
            upstream_status=status,
        )
    if status == 413:
        return RunError(
            "upstream_request_too_large",
            f"The upstream API refused the request as too large (413): {detail}",
            upstream_status=status,
        )
    if status is not None and 400 <= status < 500:
        return RunError(
            "upstream_bad_request",
            f"The upstream API refused the request ({status}): {detail}",
            upstream_status=status,
        )
    return RunError(
        "cli_error", f"The claude CLI reported an error ({reason or 'unknown'}): {detail}"
    )
