"""The OpenAI door: ``POST /v1/chat/completions``.

OpenAI SDKs and the editors built on them point their base URL at ccgate and keep working.
The conversation is translated to Anthropic Messages (system messages become the system
prompt, image parts become image blocks) and runs like any other turn: a job on the CLI
backend, a direct upstream call on the API backend. Tool calling is refused with a clear 400
on the CLI backend (ccgate runs Claude Code with no tools); on the API backend it is
translated to Anthropic tool use and back (``doors/chat_tools.py``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ccgate.api.admission import resolve_model
from ccgate.api.auth import require_key
from ccgate.api.content import (
    bad,
    conversation_bytes,
    image_block,
    number_up_to,
    positive_int,
    split_turns,
)
from ccgate.api.deps import services_of
from ccgate.api.doors.chat_tools import (
    TOOL_FIELDS,
    ChunkShape,
    ToolRequest,
    openai_finish_reason,
    openai_usage,
    tool_bytes,
    tool_completion,
    tool_request,
    tool_result_block,
    tool_use_blocks,
    uses_tools,
)
from ccgate.api.errors import error_body, request_id_of
from ccgate.api.lifecycle import Turn, client_closed
from ccgate.api.middleware import audit_facts
from ccgate.api.request_body import check_prompt_size, check_unicode, read_json_object
from ccgate.api.run_body import JSON_ONLY_INSTRUCTION
from ccgate.api.streaming import SSE_HEADERS, ClosingStreamingResponse
from ccgate.errors import ApiError
from ccgate.limits.estimate import conversation_size, estimate_run
from ccgate.runners.base import RunRequest, RunResult
from ccgate.store import KeyRecord
from ccgate.structured import SchemaInvalid, asking_for_schema, check_schema_async
from ccgate.turns import ContentBlock, ImageBlock

router = APIRouter(prefix="/v1", tags=["openai"])
CallerKey = Annotated[KeyRecord, Depends(require_key)]


@dataclass
class ChatCall:
    """A validated chat completion request, as Anthropic Messages."""

    model: str
    stream: bool
    include_usage: bool
    system: str | None
    history: list[dict[str, Any]]
    content: list[ContentBlock]
    max_tokens: int | None
    stop: list[str] | None
    temperature: float | None
    top_p: float | None
    json_only: bool
    tools: ToolRequest | None = None  # set only when tools are allowed and used
    json_schema: Any = None  # response_format.json_schema.schema as sent (checked later)


def _text_of_parts(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise bad(f"{where}.{index}: only text parts are allowed here", f"{where}.{index}")
            texts.append(part["text"])
        return "\n".join(texts)
    raise bad(f"{where}: must be a string or a list of content parts", where)


def _data_url_image(url: Any, where: str) -> ImageBlock:
    if not isinstance(url, str) or not url.startswith("data:"):
        raise bad(
            f"{where}: images must be data URLs (data:image/png;base64,...); ccgate "
            "does not fetch image URLs",
            where,
        )
    header, _, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if encoding != "base64":
        raise bad(f"{where}: data URLs must be base64-encoded", where)
    return image_block(media_type, data, where)


def _user_blocks(content: Any, where: str) -> list[ContentBlock]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        raise bad(f"{where}: must be a string or a non-empty list of content parts", where)
    blocks: list[ContentBlock] = []
    for index, part in enumerate(content):
        at = f"{where}.{index}"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            blocks.append(_data_url_image(url, f"{at}.image_url.url"))
        else:
            raise bad(
                f"{at}.type: unsupported content part {kind!r}; supported: text, "
                "image_url (data URLs)",
                f"{at}.type",
            )
    return blocks


def _turns(messages: Any, tools_allowed: bool) -> tuple[str | None, list[dict[str, Any]]]:
    if not isinstance(messages, list) or not messages:
        raise bad("messages: must be a non-empty list", "messages")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise bad(f"{where}: must be an object", where)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.append(_text_of_parts(content, f"{where}.content"))
        elif role == "user":
            turns.append({"role": "user", "content": _user_blocks(content, f"{where}.content")})
        elif role == "assistant":
            calls = tool_use_blocks(message, where) if tools_allowed else []
            if not tools_allowed and (message.get("tool_calls") or message.get("function_call")):
                raise bad(
                    f"{where}: tool calls need tools, which are off by design "
                    "(ccgate runs Claude Code with no tools)",
                    where,
                )
            text = _text_of_parts(content if content is not None else "", f"{where}.content")
            blocks = [{"type": "text", "text": text}] if text or not calls else []
            turns.append({"role": "assistant", "content": [*blocks, *calls]})
        elif role in ("tool", "function") and tools_allowed:
            text = _text_of_parts(content if content is not None else "", f"{where}.content")
            turns.append(
                {"role": "user", "content": [tool_result_block(message, where, text, turns)]}
            )
        elif role in ("tool", "function"):
            raise bad(
                f"{where}.role: {role} messages need tools, which are off by design "
                "(ccgate runs Claude Code with no tools)",
                f"{where}.role",
            )
        else:
            raise bad(
                f"{where}.role: must be system, developer, user or assistant", f"{where}.role"
            )
    return ("\n\n".join(system) if system else None), turns


def _schema_of(response_format: dict[str, Any]) -> Any:
    """The schema of a ``json_schema`` response format, unchecked; None when there is none
    (JSON only, as ``json_object``)."""
    where = "response_format.json_schema"
    spec = response_format.get("json_schema")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise bad(f"{where}: must be an object", where)
    for name, kind, wanted in (("name", str, "a string"), ("strict", bool, "a boolean")):
        if spec.get(name) is not None and not isinstance(spec[name], kind):
            raise bad(f"{where}.{name}: must be {wanted}", f"{where}.{name}")
    return spec.get("schema")


def parse_chat_call(body: dict[str, Any], *, tools_allowed: bool = False) -> ChatCall:
    """Validate a chat completion body, naming the bad field; tools only if allowed."""
    for name in TOOL_FIELDS:
        if body.get(name) and not tools_allowed:
            raise bad(
                f"{name}: tool and function calling are off by design on the CLI "
                "backend (ccgate runs Claude Code with no tools); use CCGATE_BACKEND=api "
                "for tool calling",
                name,
            )
    tools = tool_request(body) if tools_allowed and uses_tools(body) else None
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model: field required", "model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("stream: must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("stream_options: must be an object", "stream_options")
    n = body.get("n")
    if n not in (None, 1):
        raise bad("n: only one choice (n=1) is supported", "n")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)
    ):
        raise bad("stop: must be a string or a list of strings", "stop")
    response_format = body.get("response_format") or {}
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in (None, "text", "json_object", "json_schema"):
        raise bad(
            "response_format.type: must be text, json_object or json_schema", "response_format.type"
        )
    system, turns = _turns(body.get("messages"), tools is not None)
    history, content = split_turns(turns)
    max_tokens = positive_int(body, "max_completion_tokens") or positive_int(body, "max_tokens")
    temperature = number_up_to(body, "temperature", 2)
    return ChatCall(
        model=model,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        system=system,
        history=history,
        content=content,
        max_tokens=max_tokens,
        stop=stop,
        temperature=min(temperature, 1.0) if temperature is not None else None,
        top_p=number_up_to(body, "top_p", 1),
        json_only=kind in ("json_object", "json_schema"),
        tools=tools,
        json_schema=_schema_of(response_format) if kind == "json_schema" else None,
    )


async def _checked_schema(raw: Any) -> dict[str, Any] | None:
    """The request's JSON Schema once checked (400 naming why), or None."""
    if raw is None:
        return None
    where = "response_format.json_schema.schema"
    try:
        return await check_schema_async(raw)
    except SchemaInvalid as exc:
        raise bad(f"{where}: {str(exc).removeprefix('json_schema: ')}", where) from None


@router.post("/chat/completions", summary="OpenAI Chat Completions API")
async def chat_completions(request: Request, key: CallerKey) -> Response:
    """Answer like ``POST /v1/chat/completions`` of the OpenAI API, streaming or not."""
    body = await read_json_object(request)
    check_unicode(body)
    services = services_of(request)
    settings = services.settings
    call = parse_chat_call(body, tools_allowed=services.backend.capabilities.client_tools)
    schema = await _checked_schema(call.json_schema)
    model = resolve_model(request, key, call.model)
    size = conversation_bytes(call.system, call.history, call.content)
    if call.tools is not None:
        size += tool_bytes([*call.history, {"content": call.content}], call.tools)
    check_prompt_size(size, settings.max_prompt_bytes)
    facts = audit_facts(request)
    facts.model, facts.prompt_bytes = model, size
    if settings.audit_prompts:
        facts.prompt_text = json.dumps(body.get("messages"), ensure_ascii=False)
    run_request = RunRequest(
        content=call.content,
        model=model,
        history=call.history,
        system_prompt=call.system,
        append_system_prompt=JSON_ONLY_INSTRUCTION if call.json_only else None,
        timeout_secs=settings.job_timeout_secs,
        idle_timeout_secs=settings.idle_timeout_secs,
        max_tokens=call.max_tokens,
        stop_sequences=call.stop,
        temperature=call.temperature,
        top_p=call.top_p,
        owner=key.id,
    )
    if schema is not None and call.tools is not None:
        # With tools the answer may be a tool call: the model is told the schema, no more.
        run_request = asking_for_schema(run_request, schema)
    definitions = conversation_size(None, [], call.tools.fields) if call.tools else None
    estimated = asking_for_schema(run_request, schema) if schema and not call.tools else run_request
    turn = await Turn.admit(
        request, key, "openai", estimate_run(estimated, definitions), run_request=run_request
    )
    if call.tools is not None:
        return await tool_completion(
            turn, call.tools, stream=call.stream, include_usage=call.include_usage
        )
    if schema is not None:
        return await _structured_completion(turn, call, model, schema)
    await turn.start()
    completion_id = "chatcmpl-" + turn.message_id.removeprefix("msg_")
    created = int(time.time())
    if call.stream:
        shape = ChunkShape(completion_id, created, model, call.include_usage)
        return await turn.stream(_ChunkStream(turn, shape))
    result = await turn.answer()
    if result is None:
        return client_closed()
    return _completion(completion_id, created, model, result)


async def _structured_completion(
    turn: Turn, call: ChatCall, model: str, schema: dict[str, Any]
) -> Response:
    """A ``json_schema`` answer: validated (one repair run) before anything is sent, so a
    stream carries the matching JSON in one delta and a mismatch is a real 422."""
    result = await turn.answer_structured(schema)
    if result is None:
        return client_closed()
    completion_id = "chatcmpl-" + turn.message_id.removeprefix("msg_")
    created = int(time.time())
    if not call.stream:
        return _completion(completion_id, created, model, result)
    renderer = _ChunkStream(turn, ChunkShape(completion_id, created, model, call.include_usage))
    frames = [*renderer.opening(), renderer.text(result.text), *renderer.closing(result)]
    return ClosingStreamingResponse(frames, headers=SSE_HEADERS)  # ready frames: no thread


def _completion(completion_id: str, created: int, model: str, result: RunResult) -> Response:
    """A finished ``chat.completion``."""
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": result.model or model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": openai_finish_reason(result.stop_reason),
                }
            ],
            "usage": openai_usage(result.usage),
        }
    )


@dataclass
class _ChunkStream:
    """Role delta, content deltas, the finish chunk, the usage chunk if asked, [DONE]."""

    turn: Turn
    shape: ChunkShape

    def opening(self) -> list[bytes]:
        """The role delta."""
        return [self.shape.chunk({"role": "assistant", "content": ""})]

    def ping(self) -> bytes:
        """An SSE comment."""
        return b": keep-alive\n\n"

    def text(self, text: str) -> bytes:
        """One content delta."""
        return self.shape.chunk({"content": text})

    def closing(self, result: RunResult) -> list[bytes]:
        """The finish chunk, the usage chunk if asked, [DONE]."""
        frames = [self.shape.chunk({}, openai_finish_reason(result.stop_reason))]
        if self.shape.include_usage:
            frames.append(self.shape.chunk({}, choices=False, usage=openai_usage(result.usage)))
        frames.append(b"data: [DONE]\n\n")
        return frames

    def error(self, error: ApiError) -> bytes:
        """An error chunk in the OpenAI shape."""
        payload = error_body("openai", request_id_of(self.turn.request), error)
        return f"data: {json.dumps(payload)}\n\n".encode()
