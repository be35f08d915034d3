"""The OpenAI Responses API's requests (``POST /v1/responses``), read as a turn.

Pure translation, no HTTP framework: ``parse_request`` turns a request body into a
``ResponsesCall`` (Anthropic Messages, sampling, structured output, Anthropic tools) or raises
``WireError`` naming the field. ``render`` turns the turn's answer back into a
Response and its stream; ``routes`` wires both to the lifecycle, the store and the routes.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ccgate.api.content import image_block, merge_turns, number_up_to, positive_int
from ccgate.errors import ApiError
from ccgate.structured import SchemaInvalid, check_schema, check_schema_async
from ccgate.turns import ContentBlock, DocumentBlock, ToolResultBlock, ToolUseBlock

_CLI_NO_TOOLS = (
    "tool and function calling are off by design on the CLI backend (ccgate runs Claude Code "
    "with no tools); use CCGATE_BACKEND=api for tool calling"
)
_MAX_TEXT_BLOCKS = 10_000
_METADATA_KEYS, _METADATA_KEY_CHARS, _METADATA_VALUE_CHARS = 16, 64, 512
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
    content: list[ContentBlock]
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


def parse_request(
    body: Mapping[str, Any],
    *,
    tools_allowed: bool = False,
    schema_check: Callable[[object], dict[str, Any]] | None = check_schema,
) -> ResponsesCall:
    """Validate a ``POST /v1/responses`` body, naming the bad field; tools only if allowed.

    ``schema_check`` checks a ``text.format`` JSON Schema; None leaves it to the caller (the
    door checks it in a worker thread with ``check_format_schema``)."""
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
    text, json_only, schema = _text_format(body.get("text"), schema_check)
    definitions, choice = _tools(body) if uses_tools else ([], "auto")
    parallel = _optional(body, "parallel_tool_calls", bool)
    temperature = number_up_to(body, "temperature", 2, WireError)
    truncation = body.get("truncation") or "disabled"
    if truncation not in ("auto", "disabled"):
        raise WireError("truncation: must be 'auto' or 'disabled'", "truncation")
    include = body.get("include")
    if include is not None and (
        not isinstance(include, list) or not all(isinstance(i, str) for i in include)
    ):
        raise WireError("include: must be a list of strings", "include")
    max_tokens = positive_int(body, "max_output_tokens", WireError)
    top_p = number_up_to(body, "top_p", 1, WireError)
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


def _user_parts(content: Any, item: str) -> list[ContentBlock]:
    where = f"{item}.content"
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        raise WireError(f"{where}: must be a string or a non-empty list of content parts", where)
    blocks: list[ContentBlock] = []
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


def _document(part: dict[str, Any], at: str) -> DocumentBlock:
    media_type, data = _data_url(part.get("file_data"), f"{at}.file_data", "files")
    if media_type != "application/pdf":
        raise WireError(f"{at}.file_data: only PDF files are supported", f"{at}.file_data")
    document: DocumentBlock = {
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


def _tool_use(item: dict[str, Any], where: str) -> ToolUseBlock:
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


def _tool_result(item: dict[str, Any], where: str) -> ToolResultBlock:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise WireError(
            f"{where}.call_id: must name the function call this answers", f"{where}.call_id"
        )
    text = _text_parts(item.get("output"), f"{where}.output", "input_text")
    return {"type": "tool_result", "tool_use_id": call_id, "content": text}


def _split(
    turns: list[dict[str, Any]], *, continued: bool
) -> tuple[list[dict[str, Any]], list[ContentBlock]]:
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


def _text_format(
    value: Any, schema_check: Callable[[object], dict[str, Any]] | None
) -> tuple[dict[str, Any], bool, dict[str, Any] | None]:
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
    schema = fmt.get("schema")
    if schema_check is not None:
        schema = _checked(schema_check, schema)
    elif not isinstance(schema, dict):
        raise WireError("text.format.schema: must be a JSON object", "text.format.schema")
    echo = {"type": "json_schema", "name": name, "schema": schema, "strict": fmt.get("strict")}
    if isinstance(fmt.get("description"), str):
        echo["description"] = fmt["description"]
    return {"format": echo}, True, schema


def _checked(schema_check: Callable[[object], dict[str, Any]], schema: object) -> dict[str, Any]:
    try:
        return schema_check(schema)
    except SchemaInvalid as exc:
        raise WireError(f"text.format.schema: {exc}", "text.format.schema") from None


async def check_format_schema(call: ResponsesCall) -> ResponsesCall:
    """``call`` with its ``text.format`` schema checked (in a worker thread: checking a large
    schema against its metaschema takes a few hundred milliseconds)."""
    if call.json_schema is None:
        return call
    try:
        schema = await check_schema_async(call.json_schema)
    except SchemaInvalid as exc:
        raise WireError(f"text.format.schema: {exc}", "text.format.schema") from None
    text = {"format": {**call.echo["text"]["format"], "schema": schema}}
    return replace(call, json_schema=schema, echo={**call.echo, "text": text})


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
