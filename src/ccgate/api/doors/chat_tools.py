"""OpenAI tool calling on the API backend, translated both ways.

OpenAI ``tools`` (or legacy ``functions``), ``tool_choice``, assistant ``tool_calls`` and
``tool`` messages become Anthropic ``tools``, ``tool_choice``, ``tool_use`` and ``tool_result``
blocks; upstream's ``tool_use`` blocks come back as ``tool_calls`` (a ``function_call`` for
legacy requests), whole or as streamed chunks. Only the API backend gets here: the CLI backend
runs Claude Code with no tools and keeps refusing them with a 400 (``doors/chat.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response

from ccgate.api.content import bad
from ccgate.api.deps import services_of
from ccgate.api.errors import error_body, request_id_of
from ccgate.api.lifecycle import Turn
from ccgate.errors import ApiError
from ccgate.ids import new_id
from ccgate.runners.anthropic_api import message_body
from ccgate.runners.anthropic_sse import UpstreamStream, sse_payloads
from ccgate.runners.base import RunError
from ccgate.turns import Usage

TOOL_FIELDS = ("tools", "functions", "tool_choice", "function_call")
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "refusal": "content_filter",
    "tool_use": "tool_calls",
}


@dataclass(frozen=True)
class ToolRequest:
    """The Anthropic tool fields of a chat request (``tools``, ``tool_choice``) and whether
    it used the legacy ``functions`` API (answered with ``function_call``)."""

    fields: dict[str, Any]
    legacy: bool = False


# -- request ---------------------------------------------------------------------------------


def uses_tools(body: dict[str, Any]) -> bool:
    """True when the body defines tools or carries tool calls or tool results."""
    if any(body.get(name) for name in TOOL_FIELDS):
        return True
    messages = body.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, dict)
        and (
            m.get("role") in ("tool", "function")
            or bool(m.get("tool_calls") or m.get("function_call"))
        )
        for m in messages
    )


def tool_request(body: dict[str, Any]) -> ToolRequest:
    """Translate ``tools``/``functions``, ``tool_choice``/``function_call`` and
    ``parallel_tool_calls``, naming the bad field."""
    tools = [
        *_definitions(body.get("tools"), "tools"),
        *_definitions(body.get("functions"), "functions"),
    ]
    legacy = bool(body.get("functions")) and not body.get("tools")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad("parallel_tool_calls: must be a boolean", "parallel_tool_calls")
    where = "tool_choice" if body.get("tool_choice") is not None else "function_call"
    choice = _choice(body[where], where) if body.get(where) is not None else None
    if not tools:
        if choice is not None and choice["type"] not in ("auto", "none"):
            raise bad(f"{where}: names a tool, but the request defines no tools", where)
        return ToolRequest({}, legacy)
    if (
        choice is not None
        and choice["type"] == "tool"
        and choice["name"] not in {tool["name"] for tool in tools}
    ):
        raise bad(f"{where}: {choice['name']!r} is not one of the tools", where)
    # A legacy answer holds one function_call, so the model makes one call at a time.
    if (parallel is False or legacy) and (choice is None or choice["type"] != "none"):
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    fields: dict[str, Any] = {"tools": tools}
    if choice is not None:
        fields["tool_choice"] = choice
    return ToolRequest(fields, legacy)


def _definitions(value: Any, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad(f"{where}: must be a list", where)
    tools = []
    for index, item in enumerate(value):
        at = f"{where}.{index}"
        if where == "tools":
            if not isinstance(item, dict) or item.get("type") != "function":
                raise bad(f"{at}.type: only function tools are supported", f"{at}.type")
            item, at = item.get("function"), f"{at}.function"
        if not isinstance(item, dict):
            raise bad(f"{at}: must be an object with a name", at)
        name, description = item.get("name"), item.get("description")
        if not isinstance(name, str) or not name:
            raise bad(f"{at}.name: must be a non-empty string", f"{at}.name")
        schema = item.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(schema, dict):
            raise bad(f"{at}.parameters: must be a JSON Schema object", f"{at}.parameters")
        tool: dict[str, Any] = {"name": name}
        if description is not None:
            if not isinstance(description, str):
                raise bad(f"{at}.description: must be a string", f"{at}.description")
            tool["description"] = description
        tool["input_schema"] = schema
        tools.append(tool)
    return tools


def _choice(value: Any, where: str) -> dict[str, Any]:
    if value in ("auto", "none"):
        return {"type": value}
    if value == "required" and where == "tool_choice":
        return {"type": "any"}
    if isinstance(value, dict):
        named = value.get("function") if where == "tool_choice" else value
        at = f"{where}.function.name" if where == "tool_choice" else f"{where}.name"
        if where == "tool_choice" and value.get("type") != "function":
            raise bad(f"{where}.type: must be 'function'", f"{where}.type")
        name = named.get("name") if isinstance(named, dict) else None
        if not isinstance(name, str) or not name:
            raise bad(f"{at}: must be a non-empty string", at)
        return {"type": "tool", "name": name}
    if where == "tool_choice":
        raise bad(
            "tool_choice: must be 'auto', 'none', 'required' or {\"type\": \"function\", "
            '"function": {"name": ...}}',
            where,
        )
    raise bad("function_call: must be 'auto', 'none' or {\"name\": ...}", where)


def tool_use_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The ``tool_use`` blocks of an assistant message's ``tool_calls`` / ``function_call``."""
    calls = message.get("tool_calls")
    blocks = []
    if calls is not None:
        if not isinstance(calls, list):
            raise bad(f"{where}.tool_calls: must be a list", f"{where}.tool_calls")
        for index, call in enumerate(calls):
            at = f"{where}.tool_calls.{index}"
            if not isinstance(call, dict) or call.get("type", "function") != "function":
                raise bad(f"{at}.type: only function tool calls are supported", f"{at}.type")
            if not isinstance(call.get("id"), str) or not call["id"]:
                raise bad(f"{at}.id: must be a non-empty string", f"{at}.id")
            blocks.append(_tool_use(call["id"], call.get("function"), f"{at}.function"))
    if message.get("function_call") is not None:
        # Legacy calls have no id; the function message answering it finds it by name.
        blocks.append(
            _tool_use(
                "call_" + where.replace(".", "_"),
                message["function_call"],
                f"{where}.function_call",
            )
        )
    return blocks


def _tool_use(call_id: str, function: Any, where: str) -> dict[str, Any]:
    if not isinstance(function, dict):
        raise bad(f"{where}: must be an object with name and arguments", where)
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise bad(f"{where}.name: must be a non-empty string", f"{where}.name")
    return {
        "type": "tool_use",
        "id": call_id,
        "name": name,
        "input": _arguments(function.get("arguments"), f"{where}.arguments"),
    }


def _no_constants(name: str) -> Any:
    raise ValueError(name)


def _arguments(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str) and not value.strip():
        return {}  # some clients send "" for a call without arguments
    try:
        parsed = json.loads(value, parse_constant=_no_constants) if isinstance(value, str) else None
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")  # no lone surrogates
    except (ValueError, RecursionError, UnicodeEncodeError):
        parsed = None
    if not isinstance(parsed, dict):
        raise bad(f"{where}: must be a JSON object encoded as a string", where)
    return parsed


def tool_result_block(
    message: dict[str, Any], where: str, text: str, turns: list[dict[str, Any]]
) -> dict[str, Any]:
    """The ``tool_result`` block of a ``tool`` (or legacy ``function``) message."""
    if message.get("role") == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise bad(
                f"{where}.tool_call_id: must name the tool call this answers",
                f"{where}.tool_call_id",
            )
    else:
        call_id = _last_call_id(turns, message.get("name"))
        if call_id is None:
            raise bad(
                f"{where}: a function message must follow an assistant function_call of that name",
                where,
            )
    return {"type": "tool_result", "tool_use_id": call_id, "content": text}


def _last_call_id(turns: list[dict[str, Any]], name: Any) -> str | None:
    for turn in reversed(turns):
        for block in reversed(turn["content"]):
            if block["type"] == "tool_use" and (name is None or block["name"] == name):
                return str(block["id"])
    return None


def tool_bytes(turns: list[dict[str, Any]], tools: ToolRequest) -> int:
    """UTF-8 size of what tools add to a conversation: definitions, inputs, results."""
    size = len(json.dumps(tools.fields, ensure_ascii=False).encode()) if tools.fields else 0
    for turn in turns:
        for block in turn["content"]:
            if block["type"] == "tool_use":
                size += len(json.dumps(block["input"], ensure_ascii=False).encode())
            elif block["type"] == "tool_result":
                size += len(block["content"].encode())
    return size


# -- response --------------------------------------------------------------------------------


def openai_finish_reason(stop_reason: str | None, legacy: bool = False) -> str:
    """OpenAI's finish_reason for an Anthropic stop reason."""
    reason = _FINISH_REASONS.get(stop_reason or "end_turn", "stop")
    return "function_call" if legacy and reason == "tool_calls" else reason


def openai_usage(raw: dict[str, int] | None) -> dict[str, int]:
    """OpenAI's usage object: prompt tokens include the cached ones."""
    usage = Usage.from_mapping(raw)
    prompt = usage.prompt_tokens
    completion = usage.output_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion_message(message: dict[str, Any], legacy: bool = False) -> dict[str, Any]:
    """The OpenAI assistant message for an Anthropic message object: text blocks joined
    into ``content`` (null if none), ``tool_use`` blocks as ``tool_calls``."""
    blocks = [b for b in message.get("content") or [] if isinstance(b, dict)]
    texts = [
        b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str)
    ]
    calls = [
        {
            "id": b.get("id"),
            "type": "function",
            "function": {
                "name": b.get("name"),
                "arguments": json.dumps(b.get("input") or {}, ensure_ascii=False),
            },
        }
        for b in blocks
        if b.get("type") == "tool_use"
    ]
    answer: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if calls and legacy:
        answer["function_call"] = calls[0]["function"]
    elif calls:
        answer["tool_calls"] = calls
    return answer


@dataclass(frozen=True)
class ChunkShape:
    """The fixed parts of one streamed completion's ``chat.completion.chunk`` objects."""

    completion_id: str
    created: int
    model: str
    include_usage: bool

    def chunk(
        self,
        delta: dict[str, Any],
        finish: str | None = None,
        *,
        choices: bool = True,
        usage: dict[str, int] | None = None,
    ) -> bytes:
        """One ``data:`` line; with include_usage every chunk has ``usage`` (null but last)."""
        data: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            if choices
            else [],
        }
        if self.include_usage:
            data["usage"] = usage
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class ToolStream:
    """Anthropic stream events to OpenAI deltas: text as ``content``, each ``tool_use`` block
    as a ``tool_calls`` entry of its own index, its ``input_json_delta`` pieces as arguments."""

    def __init__(self, legacy: bool = False) -> None:
        self.legacy = legacy
        self._calls: dict[Any, int] = {}  # Anthropic block index -> OpenAI tool call index

    def delta(self, event: Any) -> dict[str, Any] | None:
        """The delta an event stands for, or None for events OpenAI has no delta for."""
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "content_block_start" and isinstance(event.get("content_block"), dict):
            block = event["content_block"]
            if block.get("type") == "text" and block.get("text"):
                return {"content": str(block["text"])}
            if block.get("type") == "tool_use" and not (self.legacy and self._calls):
                self._calls[event.get("index")] = len(self._calls)
                return self._call_start(block)
        elif kind == "content_block_delta" and isinstance(event.get("delta"), dict):
            delta = event["delta"]
            if delta.get("type") == "text_delta" and delta.get("text"):
                return {"content": str(delta["text"])}
            piece = delta.get("partial_json")
            if (
                delta.get("type") == "input_json_delta"
                and piece
                and event.get("index") in self._calls
            ):
                if self.legacy:
                    return {"function_call": {"arguments": str(piece)}}
                return {
                    "tool_calls": [
                        {
                            "index": self._calls[event.get("index")],
                            "function": {"arguments": str(piece)},
                        }
                    ]
                }
        return None

    def _call_start(self, block: dict[str, Any]) -> dict[str, Any]:
        given = block.get("input")
        function = {
            "name": str(block.get("name") or ""),
            "arguments": json.dumps(given, ensure_ascii=False) if given else "",
        }
        if self.legacy:
            return {"function_call": function}
        return {
            "tool_calls": [
                {
                    "index": len(self._calls) - 1,
                    "id": block.get("id"),
                    "type": "function",
                    "function": function,
                }
            ]
        }


# -- the route -------------------------------------------------------------------------------


async def tool_completion(
    turn: Turn, tools: ToolRequest, *, stream: bool, include_usage: bool
) -> Response:
    """Answer a chat request that uses tools straight from the upstream API (API backend).

    The turn's ticket is settled with the run's usage however the request ends.
    """
    request = turn.request
    assert turn.run_request is not None
    runner = services_of(request).backend.require_passthrough()
    body = {**message_body(turn.run_request), **tools.fields, "stream": stream}
    model = turn.run_request.model
    shape = ChunkShape(
        "chatcmpl-" + new_id("msg").removeprefix("msg_"), int(time.time()), model, include_usage
    )
    if stream:
        upstream: UpstreamStream = await turn.upstream(runner.open_stream(body, {}))

        async def close() -> None:
            await upstream.aclose()
            await _settle(turn, upstream.model or model, upstream.usage, upstream.completed)

        def error_frame(error: ApiError) -> bytes:
            payload = error_body("openai", request_id_of(request), error)
            return f"data: {json.dumps(payload)}\n\n".encode()

        return turn.relay(_chunks(upstream, shape, tools.legacy), error_frame, close)
    opened = await turn.upstream(runner.send(body, {}))
    await _settle(turn, opened.model or model, opened.usage, True)
    message = completion_message(opened.json, tools.legacy)
    turn.facts.response_bytes = len(
        json.dumps(
            [message["content"], message.get("tool_calls") or message.get("function_call")],
            ensure_ascii=False,
        ).encode()
    )
    return JSONResponse(
        {
            "id": shape.completion_id,
            "object": "chat.completion",
            "created": shape.created,
            "model": opened.model or model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": openai_finish_reason(opened.stop_reason, tools.legacy),
                }
            ],
            "usage": openai_usage(opened.usage),
        }
    )


async def _settle(turn: Turn, model: str, usage: dict[str, int], completed: bool) -> None:
    turn.facts.model = model
    await turn.settle_upstream(model, usage, completed=completed)


async def _chunks(
    upstream: UpstreamStream, shape: ChunkShape, legacy: bool
) -> AsyncIterator[bytes]:
    """Role delta, content and tool call deltas, the finish chunk, usage if asked, [DONE]."""
    tools = ToolStream(legacy)
    yield shape.chunk({"role": "assistant", "content": ""})
    async for event in sse_payloads(upstream):
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "error":
            raise upstream.error or RunError("upstream_error", "the upstream stream failed")
        if kind == "ping":
            yield b": keep-alive\n\n"
        elif (delta := tools.delta(event)) is not None:
            yield shape.chunk(delta)
    yield shape.chunk({}, openai_finish_reason(upstream.stop_reason, legacy))
    if shape.include_usage:
        yield shape.chunk({}, choices=False, usage=openai_usage(upstream.usage))
    yield b"data: [DONE]\n\n"
