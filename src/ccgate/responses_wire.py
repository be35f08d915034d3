"""The OpenAI Responses API wire format (``/v1/responses``), translated to a turn and back.

Pure translation, no HTTP framework: ``parse_request`` turns a request body into a
``ResponsesCall`` (Anthropic Messages, sampling, structured output, Anthropic tools) or raises
``WireError`` naming the field; ``render_response`` builds the Response object the openai SDK
parses; ``ResponseStream`` yields the server-sent events its streaming client expects, numbered
from 0. The door wires these to admission, the runner, the store and the routes.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ccgate.api.content import image_block, merge_turns
from ccgate.errors import ApiError
from ccgate.structured import SchemaInvalid, check_schema

_CLI_NO_TOOLS = (
    "tool and function calling are off by design on the CLI backend (ccgate runs Claude Code "
    "with no tools); use CCGATE_BACKEND=api for tool calling"
)
_MAX_TEXT_BLOCKS = 10_000
_METADATA_KEYS, _METADATA_KEY_CHARS, _METADATA_VALUE_CHARS = 16, 64, 512
# Response.error.code is a closed list in the SDK; ccgate's own error type goes in ``type``.
_RATE_ERRORS = ("upstream_rate_limited", "upstream_overloaded", "queue_full")
# Fields whose meaning ccgate cannot keep: refused rather than silently dropped.
_REFUSED = {
    "background": "background mode is not supported; send the request and wait, or stream it",
    "conversation": "conversations are not supported; continue with previous_response_id",
    "prompt": "stored prompt templates are not supported; send instructions and input",
}


class WireError(ApiError):
    """A request ccgate cannot take: a 400 ``invalid_request`` naming the bad field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__("invalid_request", message, param=param)


@dataclass(frozen=True)
class ToolCall:
    """One function call of the model: its call id, function name and arguments (JSON text)."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ResponsesCall:
    """A validated Responses request, as a turn: Anthropic Messages plus what to echo back.

    ``history`` is this request's earlier turns (alternating, starting with the user unless
    ``previous_response_id`` continues a stored conversation: see ``continued``); ``content``
    is the new user turn. ``tools`` holds the Anthropic ``tools``/``tool_choice`` fields and is
    set only when the request uses tools (definitions or function call items).
    """

    model: str
    system: str | None
    history: list[dict[str, Any]]
    content: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    json_only: bool = False
    json_schema: dict[str, Any] | None = None
    tools: dict[str, Any] | None = None
    previous_response_id: str | None = None
    store: bool = True
    metadata: dict[str, str] = field(default_factory=dict)
    stream: bool = False
    echo: dict[str, Any] = field(default_factory=dict)

    def continued(self, earlier: Sequence[dict[str, Any]]) -> ResponsesCall:
        """This call after the stored turns of its previous response (Anthropic Messages)."""
        turns = merge_turns([*earlier, *self.history, {"role": "user", "content": self.content}])
        if turns[0]["role"] != "user":
            raise WireError(
                "previous_response_id: the stored conversation must start with the user",
                "previous_response_id",
            )
        return replace(self, history=turns[:-1], content=turns[-1]["content"])


# -- request ---------------------------------------------------------------------------------


def parse_request(body: Mapping[str, Any], *, tools_allowed: bool = False) -> ResponsesCall:
    """Validate a ``POST /v1/responses`` body, naming the bad field; tools only if allowed."""
    for name, why in _REFUSED.items():
        if body.get(name):
            raise WireError(f"{name}: {why}", name)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireError("model: field required", "model")
    previous = _optional(body, "previous_response_id", str)
    uses_tools = bool(body.get("tools") or body.get("tool_choice")) or _has_tool_items(body)
    if uses_tools and not tools_allowed:
        where = (
            "tools" if body.get("tools") else "tool_choice" if body.get("tool_choice") else "input"
        )
        raise WireError(f"{where}: {_CLI_NO_TOOLS}", where)
    instructions = _optional(body, "instructions", str)
    system, turns = _input_turns(body.get("input"))
    if instructions:
        system.insert(0, instructions)
    history, content = _split(turns, continued=previous is not None)
    text, json_only, schema = _text_format(body.get("text"))
    definitions, choice = _tools(body) if uses_tools else ([], "auto")
    parallel = _optional(body, "parallel_tool_calls", bool)
    temperature = _number(body, "temperature", 2)
    truncation = body.get("truncation") or "disabled"
    if truncation not in ("auto", "disabled"):
        raise WireError("truncation: must be 'auto' or 'disabled'", "truncation")
    include = body.get("include")
    if include is not None and (
        not isinstance(include, list) or not all(isinstance(i, str) for i in include)
    ):
        raise WireError("include: must be a list of strings", "include")
    max_tokens = _positive(body, "max_output_tokens")
    top_p = _number(body, "top_p", 1)
    metadata = _metadata(body.get("metadata"))
    store = _optional(body, "store", bool) is not False
    return ResponsesCall(
        model=model,
        system="\n\n".join(system) if system else None,
        history=history,
        content=content,
        max_tokens=max_tokens,
        temperature=min(temperature, 1.0) if temperature is not None else None,
        top_p=top_p,
        json_only=json_only,
        json_schema=schema,
        tools=_anthropic_tools(definitions, choice, parallel) if uses_tools else None,
        previous_response_id=previous,
        store=store,
        metadata=metadata,
        stream=_optional(body, "stream", bool) is True,
        echo={
            "instructions": instructions,
            "max_output_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "tool_choice": choice,
            "tools": definitions,
            "text": text,
            "parallel_tool_calls": parallel is not False,
            "previous_response_id": previous,
            "store": store,
            "metadata": metadata,
            "truncation": truncation,
            "user": _optional(body, "user", str),
            "reasoning": None,
        },
    )


def _optional(body: Mapping[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        noun = {str: "a string", bool: "a boolean"}.get(kind, kind.__name__)
        raise WireError(f"{name}: must be {noun}", name)
    return value


def _positive(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WireError(f"{name}: must be a positive integer", name)
    return value


def _number(body: Mapping[str, Any], name: str, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= high
    ):
        raise WireError(f"{name}: must be a number between 0 and {high:g}", name)
    return float(value)


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > _METADATA_KEYS:
        raise WireError(f"metadata: must be an object of at most {_METADATA_KEYS} keys", "metadata")
    for key, item in value.items():
        if len(key) > _METADATA_KEY_CHARS or not isinstance(item, str):
            raise WireError(
                f"metadata: keys of at most {_METADATA_KEY_CHARS} characters, string values",
                "metadata",
            )
        if len(item) > _METADATA_VALUE_CHARS:
            raise WireError(
                f"metadata.{key}: at most {_METADATA_VALUE_CHARS} characters", f"metadata.{key}"
            )
    return dict(value)


def _has_tool_items(body: Mapping[str, Any]) -> bool:
    items = body.get("input")
    return isinstance(items, list) and any(
        isinstance(i, dict) and i.get("type") in ("function_call", "function_call_output")
        for i in items
    )


def _input_turns(value: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """(system texts, Anthropic turns) of ``input``: a string or a list of items."""
    if isinstance(value, str):
        if not value:
            raise WireError("input: must not be empty", "input")
        return [], [{"role": "user", "content": [{"type": "text", "text": value}]}]
    if not isinstance(value, list) or not value:
        raise WireError("input: must be a string or a non-empty list of items", "input")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        where = f"input.{index}"
        if not isinstance(item, dict):
            raise WireError(f"{where}: must be an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role in ("system", "developer"):
                system.append(_text_parts(item.get("content"), f"{where}.content", "input_text"))
            elif role == "user":
                turns.append({"role": "user", "content": _user_parts(item.get("content"), where)})
            elif role == "assistant":
                text = _text_parts(item.get("content"), f"{where}.content", "output_text")
                if text:
                    turns.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
            else:
                raise WireError(
                    f"{where}.role: must be user, assistant, system or developer", f"{where}.role"
                )
        elif kind == "function_call":
            turns.append({"role": "assistant", "content": [_tool_use(item, where)]})
        elif kind == "function_call_output":
            turns.append({"role": "user", "content": [_tool_result(item, where)]})
        else:
            raise WireError(
                f"{where}.type: unsupported item type {kind!r}; supported: message, "
                "function_call, function_call_output",
                f"{where}.type",
            )
    return system, turns


def _text_parts(content: Any, where: str, kind: str) -> str:
    """The text of a string or of a list of text parts (``kind``, or ``input_text``)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise WireError(f"{where}: must be a string or a list of content parts", where)
    texts = []
    for index, part in enumerate(content):
        if (
            not isinstance(part, dict)
            or part.get("type") not in (kind, "input_text")
            or not isinstance(part.get("text"), str)
        ):
            raise WireError(
                f"{where}.{index}: only {kind} parts are allowed here", f"{where}.{index}"
            )
        texts.append(part["text"])
    return "\n".join(texts)


def _user_parts(content: Any, item: str) -> list[dict[str, Any]]:
    where = f"{item}.content"
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        raise WireError(f"{where}: must be a string or a non-empty list of content parts", where)
    blocks = []
    for index, part in enumerate(content):
        at = f"{where}.{index}"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_text" and isinstance(part.get("text"), str):
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            media_type, data = _data_url(part.get("image_url"), f"{at}.image_url", "images")
            try:
                blocks.append(image_block(media_type, data, f"{at}.image_url"))
            except ApiError as exc:  # the chat door's checks, in this door's error class
                raise WireError(exc.message, exc.param) from None
        elif kind == "input_file":
            blocks.append(_document(part, at))
        else:
            raise WireError(
                f"{at}.type: unsupported content part {kind!r}; supported: input_text, "
                "input_image (data URLs), input_file (PDF data URLs)",
                f"{at}.type",
            )
    return blocks


def _data_url(url: Any, where: str, what: str) -> tuple[str, str]:
    """(media type, base64 data) of a ``data:<type>;base64,<data>`` URL."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise WireError(
            f"{where}: {what} must be data URLs (data:<type>;base64,...); ccgate does not fetch "
            "URLs or read uploaded file ids",
            where,
        )
    header, _, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if encoding != "base64":
        raise WireError(f"{where}: data URLs must be base64-encoded", where)
    return media_type, data


def _document(part: dict[str, Any], at: str) -> dict[str, Any]:
    media_type, data = _data_url(part.get("file_data"), f"{at}.file_data", "files")
    if media_type != "application/pdf":
        raise WireError(f"{at}.file_data: only PDF files are supported", f"{at}.file_data")
    document: dict[str, Any] = {
        "type": "document",
        "source": {
            "type": "base64",
            "media_type": "application/pdf",
            "data": _base64(data, f"{at}.file_data"),
        },
    }
    if isinstance(part.get("filename"), str):
        document["title"] = part["filename"]
    return document


def _base64(data: str, where: str) -> str:
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise WireError(f"{where}: is not valid base64", where) from None
    if not data:
        raise WireError(f"{where}: holds no data", where)
    return data


def _tool_use(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id, name = item.get("call_id"), item.get("name")
    if not isinstance(call_id, str) or not call_id:
        raise WireError(f"{where}.call_id: must be a non-empty string", f"{where}.call_id")
    if not isinstance(name, str) or not name:
        raise WireError(f"{where}.name: must be a non-empty string", f"{where}.name")
    arguments = item.get("arguments")
    parsed: Any = None
    if isinstance(arguments, str) and not arguments.strip():
        parsed = {}
    elif isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except (ValueError, RecursionError):
            parsed = None
    if not isinstance(parsed, dict):
        raise WireError(
            f"{where}.arguments: must be a JSON object encoded as a string", f"{where}.arguments"
        )
    return {"type": "tool_use", "id": call_id, "name": name, "input": parsed}


def _tool_result(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise WireError(
            f"{where}.call_id: must name the function call this answers", f"{where}.call_id"
        )
    text = _text_parts(item.get("output"), f"{where}.output", "input_text")
    return {"type": "tool_result", "tool_use_id": call_id, "content": text}


def _split(
    turns: list[dict[str, Any]], *, continued: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    merged = merge_turns(turns)
    if not merged or merged[-1]["role"] != "user":
        raise WireError(
            "input: the last item must be a user message or a function_call_output (a partial "
            "assistant answer to continue is not supported)",
            "input",
        )
    if merged[0]["role"] != "user" and not continued:
        raise WireError(
            "input: the first item must be a user message (or continue a stored response "
            "with previous_response_id)",
            "input",
        )
    if sum(1 for t in merged for b in t["content"] if b["type"] == "text") > _MAX_TEXT_BLOCKS:
        raise WireError("input: too many content blocks", "input")
    return merged[:-1], merged[-1]["content"]


def _text_format(value: Any) -> tuple[dict[str, Any], bool, dict[str, Any] | None]:
    """(the ``text`` echo, JSON only?, the checked JSON Schema or None)."""
    if value is None:
        return {"format": {"type": "text"}}, False, None
    if not isinstance(value, dict):
        raise WireError("text: must be an object", "text")
    fmt = value.get("format") or {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        return {"format": {"type": kind}}, kind == "json_object", None
    if kind != "json_schema":
        raise WireError(
            "text.format.type: must be text, json_object or json_schema", "text.format.type"
        )
    name = fmt.get("name", "response")
    if not isinstance(name, str) or not name:
        raise WireError("text.format.name: must be a non-empty string", "text.format.name")
    try:
        schema = check_schema(fmt.get("schema"))
    except SchemaInvalid as exc:
        raise WireError(f"text.format.schema: {exc}", "text.format.schema") from None
    echo = {"type": "json_schema", "name": name, "schema": schema, "strict": fmt.get("strict")}
    if isinstance(fmt.get("description"), str):
        echo["description"] = fmt["description"]
    return {"format": echo}, True, schema


def _tools(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """(function tools as echoed, the tool_choice as echoed)."""
    value = body.get("tools") or []
    if not isinstance(value, list):
        raise WireError("tools: must be a list", "tools")
    tools = []
    for index, tool in enumerate(value):
        at = f"tools.{index}"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise WireError(
                f"{at}.type: {kind!r} tools are not supported; only function tools are",
                f"{at}.type",
            )
        name, description = tool.get("name"), tool.get("description")
        if not isinstance(name, str) or not name:
            raise WireError(f"{at}.name: must be a non-empty string", f"{at}.name")
        if description is not None and not isinstance(description, str):
            raise WireError(f"{at}.description: must be a string", f"{at}.description")
        parameters = tool.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise WireError(f"{at}.parameters: must be a JSON Schema object", f"{at}.parameters")
        strict = tool.get("strict")
        tools.append(
            {
                "type": "function",
                "name": name,
                "description": description,
                "parameters": parameters,
                "strict": strict if isinstance(strict, bool) else None,
            }
        )
    choice = body.get("tool_choice") or "auto"
    names = {tool["name"] for tool in tools}
    if choice in ("auto", "none", "required"):
        if choice == "required" and not tools:
            raise WireError("tool_choice: 'required' needs tools", "tool_choice")
        return tools, choice
    if not isinstance(choice, dict) or choice.get("type") != "function":
        raise WireError(
            "tool_choice: must be 'auto', 'none', 'required' or {\"type\": \"function\", "
            '"name": ...}',
            "tool_choice",
        )
    if choice.get("name") not in names:
        raise WireError(
            f"tool_choice.name: {choice.get('name')!r} is not one of the tools", "tool_choice.name"
        )
    return tools, {"type": "function", "name": choice["name"]}


def _anthropic_tools(
    tools: list[dict[str, Any]], choice: Any, parallel: bool | None
) -> dict[str, Any]:
    if not tools:
        return {}
    anthropic = []
    for tool in tools:
        entry: dict[str, Any] = {"name": tool["name"]}
        if tool["description"] is not None:
            entry["description"] = tool["description"]
        entry["input_schema"] = tool["parameters"]
        anthropic.append(entry)
    if isinstance(choice, dict):
        picked: dict[str, Any] = {"type": "tool", "name": choice["name"]}
    else:
        picked = {"type": {"auto": "auto", "none": "none", "required": "any"}[choice]}
    if parallel is False and picked["type"] != "none":
        picked["disable_parallel_tool_use"] = True
    return {"tools": anthropic, "tool_choice": picked}


# -- response --------------------------------------------------------------------------------


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
