"""The OpenAI Responses API's answers: the Response object and its stream of events.

Pure translation, no HTTP framework: ``render_response`` builds the Response object the openai
SDK parses; ``ResponseStream`` yields the server-sent events its streaming client expects,
numbered from 0; ``tool_calls_of`` and ``usage_of`` read an Anthropic answer.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ccgate.api.doors.responses.request import ResponsesCall

# Response.error.code is a closed list in the SDK; ccgate's own error type goes in ``type``.
_RATE_ERRORS = ("upstream_rate_limited", "upstream_overloaded", "queue_full")


@dataclass(frozen=True)
class ToolCall:
    """One function call of the model: its call id, function name and arguments (JSON text)."""

    call_id: str
    name: str
    arguments: str


def new_response_id() -> str:
    """A fresh ``resp_...`` id."""
    return "resp_" + uuid.uuid4().hex


def tool_calls_of(blocks: Sequence[Mapping[str, Any]]) -> tuple[str, list[ToolCall]]:
    """(the joined text, the function calls) of an Anthropic message's content blocks."""
    text = "".join(
        str(b["text"]) for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str)
    )
    calls = [
        ToolCall(
            str(b.get("id")),
            str(b.get("name")),
            json.dumps(b.get("input") or {}, ensure_ascii=False),
        )
        for b in blocks
        if b.get("type") == "tool_use"
    ]
    return text, calls


def usage_of(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """The Responses usage object for Anthropic usage: input tokens include the cache reads
    (``cached_tokens``) and writes (``cache_write_tokens``)."""
    usage = usage or {}
    cached = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    given = int(usage.get("input_tokens") or 0) + written + cached
    output = int(usage.get("output_tokens") or 0)
    return {
        "input_tokens": given,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": given + output,
    }


def error_of(error_type: str, message: str) -> dict[str, Any]:
    """A Response's ``error``: the SDK's closed ``code`` list, ccgate's type in ``type``."""
    limited = error_type.endswith("_exceeded") or error_type in _RATE_ERRORS
    return {
        "code": "rate_limit_exceeded" if limited else "server_error",
        "message": message,
        "type": error_type,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    """An assistant ``message`` output item holding one ``output_text`` part."""
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [_text_part(text)] if status != "in_progress" else [],
    }


def function_call_item(item_id: str, call: ToolCall, status: str = "completed") -> dict[str, Any]:
    """A ``function_call`` output item."""
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call.call_id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _item_id(prefix: str, response_id: str, index: int) -> str:
    return f"{prefix}_{response_id.removeprefix('resp_')}_{index}"


def render_response(
    call: ResponsesCall,
    *,
    response_id: str,
    created_at: int,
    model: str | None = None,
    text: str = "",
    tool_calls: Sequence[ToolCall] = (),
    usage: Mapping[str, Any] | None = None,
    stop_reason: str | None = None,
    error: dict[str, Any] | None = None,
    output: list[dict[str, Any]] | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """The Response object for a finished (or failed, or still running) turn.

    Without ``output`` the items are a message with ``text`` (when there is text or no call)
    and then one ``function_call`` item per call. ``status`` is ``failed`` with an ``error``,
    ``incomplete`` when the answer stopped at ``max_tokens``, else ``completed``.
    """
    incomplete = stop_reason == "max_tokens"
    if status is None:
        status = "failed" if error else "incomplete" if incomplete else "completed"
    if output is None:
        output = []
        if text or not tool_calls:
            item_status = "incomplete" if incomplete else "completed"
            output.append(message_item(_item_id("msg", response_id, 0), text, item_status))
        for one in tool_calls:
            output.append(function_call_item(_item_id("fc", response_id, len(output)), one))
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "model": model or call.model,
        "output": output,
        "usage": usage_of(usage) if status not in ("in_progress",) else None,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        **call.echo,
    }


class ResponseStream:
    """The Responses stream of one turn: feed it deltas, calls and the end; it returns the
    SSE frames, in the SDK's order, numbered from 0 across all events."""

    def __init__(
        self, call: ResponsesCall, *, response_id: str, created_at: int, model: str | None = None
    ) -> None:
        self.call = call
        self.response_id = response_id
        self.created_at = created_at
        self.model = model or call.model
        self.output: list[dict[str, Any]] = []
        self.response: dict[str, Any] = {}
        self._sequence = 0
        self._text: str | None = None  # the open message item's text so far
        self._arguments: str | None = None  # the open function_call item's arguments so far
        self._sent = 0  # characters of answer text sent, to catch up on at the end

    def start(self) -> list[bytes]:
        """``response.created`` and ``response.in_progress``."""
        self.response = self._snapshot("in_progress")
        return [
            self._event("response.created", response=self.response),
            self._event("response.in_progress", response=self.response),
        ]

    def text(self, delta: str) -> list[bytes]:
        """A piece of answer text (opening a message item first if none is open)."""
        if not delta:
            return []
        frames = [] if self._text is not None else self._open_message()
        self._text = (self._text or "") + delta
        self._sent += len(delta)
        frames.append(
            self._event(
                "response.output_text.delta",
                item_id=self.output[-1]["id"],
                output_index=len(self.output) - 1,
                content_index=0,
                delta=delta,
                logprobs=[],
            )
        )
        return frames

    def tool_call_start(self, call_id: str, name: str) -> list[bytes]:
        """Open a ``function_call`` item, closing any open message first."""
        frames = self._close()
        item = function_call_item(
            _item_id("fc", self.response_id, len(self.output)),
            ToolCall(call_id, name, ""),
            "in_progress",
        )
        self.output.append(item)
        self._arguments = ""
        frames.append(
            self._event("response.output_item.added", output_index=len(self.output) - 1, item=item)
        )
        return frames

    def tool_call_arguments(self, delta: str) -> list[bytes]:
        """A piece of the open function call's arguments."""
        if self._arguments is None or not delta:
            return []
        self._arguments += delta
        return [
            self._event(
                "response.function_call_arguments.delta",
                item_id=self.output[-1]["id"],
                output_index=len(self.output) - 1,
                delta=delta,
            )
        ]

    def tool_call(self, call: ToolCall) -> list[bytes]:
        """A whole function call: its item opened, its arguments, its item done."""
        return [
            *self.tool_call_start(call.call_id, call.name),
            *self.tool_call_arguments(call.arguments),
            *self._close(),
        ]

    def anthropic_event(self, event: Mapping[str, Any]) -> list[bytes]:
        """The frames for one Anthropic stream event (text and tool_use blocks)."""
        kind = event.get("type")
        block = event.get("content_block")
        delta = event.get("delta")
        if kind == "content_block_start" and isinstance(block, dict):
            if block.get("type") == "tool_use":
                return self.tool_call_start(str(block.get("id")), str(block.get("name")))
            if block.get("type") == "text":
                return self.text(str(block.get("text") or ""))
        elif kind == "content_block_delta" and isinstance(delta, dict):
            if delta.get("type") == "text_delta":
                return self.text(str(delta.get("text") or ""))
            if delta.get("type") == "input_json_delta":
                return self.tool_call_arguments(str(delta.get("partial_json") or ""))
        elif kind == "content_block_stop" and self._arguments is not None:
            return self._close()
        return []

    def finish(
        self,
        *,
        usage: Mapping[str, Any] | None = None,
        stop_reason: str | None = None,
        text: str | None = None,
        model: str | None = None,
    ) -> list[bytes]:
        """Close the open item and send ``response.completed`` (``response.incomplete`` when
        the answer stopped at max_tokens). ``text``, the run's whole answer, sends what the
        deltas had not."""
        frames = []
        if text is not None and len(text) > self._sent:
            frames += self.text(text[self._sent :])
        if not self.output:
            frames += self._open_message()
        incomplete = stop_reason == "max_tokens"
        frames += self._close("incomplete" if incomplete else "completed")
        self.model = model or self.model
        self.response = self._snapshot(None, usage=usage, stop_reason=stop_reason)
        kind = "response.incomplete" if incomplete else "response.completed"
        return [*frames, self._event(kind, response=self.response)]

    def fail(self, error_type: str, message: str) -> list[bytes]:
        """Close the open item as incomplete and send ``response.failed`` with the error."""
        frames = self._close("incomplete")
        self.response = self._snapshot(None, error=error_of(error_type, message))
        return [*frames, self._event("response.failed", response=self.response)]

    def error(self, message: str, code: str | None = None, param: str | None = None) -> bytes:
        """A bare ``error`` event (a failure that is not the response's own)."""
        return self._event("error", code=code, message=message, param=param)

    def _snapshot(self, status: str | None, **outcome: Any) -> dict[str, Any]:
        return render_response(
            self.call,
            response_id=self.response_id,
            created_at=self.created_at,
            model=self.model,
            output=[dict(item) for item in self.output],
            status=status,
            **outcome,
        )

    def _open_message(self) -> list[bytes]:
        frames = self._close()
        item = message_item(_item_id("msg", self.response_id, len(self.output)), "", "in_progress")
        self.output.append(item)
        self._text = ""
        index = len(self.output) - 1
        return [
            *frames,
            self._event("response.output_item.added", output_index=index, item=item),
            self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=_text_part(""),
            ),
        ]

    def _close(self, status: str = "completed") -> list[bytes]:
        index = len(self.output) - 1
        if self._text is not None:
            text, self._text = self._text, None
            item = self.output[index] = message_item(self.output[index]["id"], text, status)
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            return [
                self._event("response.output_text.done", **where, text=text, logprobs=[]),
                self._event("response.content_part.done", **where, part=_text_part(text)),
                self._event("response.output_item.done", output_index=index, item=item),
            ]
        if self._arguments is not None:
            arguments, self._arguments = self._arguments, None
            added = self.output[index]
            item = self.output[index] = function_call_item(
                added["id"], ToolCall(added["call_id"], added["name"], arguments), status
            )
            return [
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=arguments,
                ),
                self._event("response.output_item.done", output_index=index, item=item),
            ]
        return []

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
