"""The Anthropic door: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

Existing Anthropic SDKs and tools point their base URL at ccgate and keep working: requests,
responses, the SSE event sequence and errors follow the Messages API. On the CLI backend each
request is a job on the shared queue; on the API backend it is passed upstream as sent (model
resolved, headers filtered) and the answer streams back byte for byte.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ccgate.api.admission import admit, resolve_model
from ccgate.api.auth import require_key
from ccgate.api.content import anthropic_block, bad, conversation_bytes, split_turns
from ccgate.api.conversation import Turn, api_error_of
from ccgate.api.deps import services_of
from ccgate.api.errors import error_body, request_id_of
from ccgate.api.middleware import audit_facts
from ccgate.api.native import read_json_object
from ccgate.api.streaming import ClosingStreamingResponse
from ccgate.errors import ApiError
from ccgate.limits.estimate import RunEstimate, conversation_size, estimate_run
from ccgate.pricing import cost_usd
from ccgate.runners.base import RunError, RunRequest, RunResult, TextDelta
from ccgate.store import KeyRecord

router = APIRouter(prefix="/v1", tags=["anthropic"])
T = TypeVar("T")
CallerKey = Annotated[KeyRecord, Depends(require_key)]

# Fields the CLI backend accepts but cannot apply (it has no flags for them).
_IGNORED_ON_CLI = (
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "max_tokens",
    "thinking",
    "metadata",
    "service_tier",
)


@dataclass
class MessagesCall:
    """A validated ``/v1/messages`` body."""

    raw: dict[str, Any]
    model: str
    stream: bool
    system: str | None
    history: list[dict[str, Any]]
    content: list[dict[str, Any]]
    max_tokens: int
    stop_sequences: list[str] | None
    temperature: float | None
    top_p: float | None


def _system_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for index, block in enumerate(value):
            if (
                not isinstance(block, dict)
                or block.get("type") != "text"
                or not isinstance(block.get("text"), str)
            ):
                raise bad(f"system.{index}: system blocks must be text blocks", f"system.{index}")
            parts.append(block["text"])
        return "\n\n".join(parts)
    raise bad("system: must be a string or a list of text blocks", "system")


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise bad(f"{name}: must be a number between {low:g} and {high:g}", name)
    return float(value)


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise bad("messages: must be a non-empty list", "messages")
    turns = []
    for index, message in enumerate(value):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise bad(f"{where}: must be an object", where)
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise bad(f"{where}.role: must be 'user' or 'assistant'", f"{where}.role")
        content = message.get("content")
        if isinstance(content, str):
            blocks = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            blocks = [anthropic_block(b, f"{where}.content.{i}") for i, b in enumerate(content)]
        else:
            raise bad(f"{where}.content: must be a string or a list of blocks", f"{where}.content")
        turns.append({"role": role, "content": blocks})
    return turns


def parse_messages_call(body: dict[str, Any], *, tools_allowed: bool) -> MessagesCall:
    """Validate a Messages body as the API does, naming the bad field."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model: field required", "model")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise bad("max_tokens: must be a positive integer", "max_tokens")
    if body.get("tools") and not tools_allowed:
        raise bad(
            "tools: tool use is off by design on the CLI backend (ccgate runs Claude "
            "Code with no tools); use CCGATE_BACKEND=api for tool calling",
            "tools",
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("stream: must be a boolean", "stream")
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise bad("stop_sequences: must be a list of strings", "stop_sequences")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise bad("metadata: must be an object", "metadata")
    if tools_allowed:
        # The API backend passes the conversation on as written (tool blocks included) and
        # the upstream checks its shape; only what ccgate itself needs is checked here.
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad("messages: must be a non-empty list", "messages")
        return MessagesCall(body, model, stream, None, [], [], max_tokens, stops, None, None)
    system = _system_text(body.get("system"))
    history, content = split_turns(_messages(body.get("messages")))
    return MessagesCall(
        body,
        model,
        stream,
        system,
        history,
        content,
        max_tokens,
        stops,
        _number(body, "temperature", 0, 1),
        _number(body, "top_p", 0, 1),
    )


async def _read_call(request: Request) -> MessagesCall:
    body = await read_json_object(request)
    raw = await request.body()
    # Parsing yields a lone surrogate only from a \uD800-\uDFFF escape, from UTF-8-coded
    # surrogates (byte 0xED: json decodes with surrogatepass) or from a UTF-16/32 body; only
    # then is the whole body encoded again to look for one (that costs ~1 ms per 200 KB).
    if (
        json.detect_encoding(raw) not in ("utf-8", "utf-8-sig")
        or b"\\ud" in raw
        or b"\\uD" in raw
        or b"\xed" in raw
    ):
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise bad("the body holds a lone surrogate: text must be valid Unicode") from None
    api = services_of(request).settings.backend == "api"
    return parse_messages_call(body, tools_allowed=api)


def _check_size(request: Request, size: int) -> None:
    limit = services_of(request).settings.max_prompt_bytes
    if size > limit:
        raise ApiError(
            "request_too_large",
            f"the conversation is {size} bytes of text; the "
            f"limit is {limit} (CCGATE_MAX_PROMPT_BYTES)",
        )


@router.post("/messages", summary="Anthropic Messages API (create a message)")
async def create_message(request: Request, key: CallerKey) -> Response:
    """Answer like ``POST /v1/messages`` of the Anthropic API, streaming or not."""
    call = await _read_call(request)
    model = resolve_model(request, key, call.model)
    settings = services_of(request).settings
    passed_through = settings.backend == "api"
    # The pass-through sends the body as written: its text (system, turns, tool definitions,
    # calls and results) is what counts against the limit and the estimate.
    measured = (
        conversation_size(call.raw.get("system"), call.raw.get("messages"), call.raw.get("tools"))
        if passed_through
        else None
    )
    size = (
        measured.text_bytes
        if measured is not None
        else conversation_bytes(call.system, call.history, call.content)
    )
    _check_size(request, size)
    facts = audit_facts(request)
    facts.update(model=model, prompt_bytes=size)
    if settings.audit_prompts:
        facts["prompt_text"] = json.dumps(call.raw.get("messages"), ensure_ascii=False)
    if measured is not None:
        ticket = await admit(
            request, key, "anthropic", RunEstimate(model, measured.tokens, call.max_tokens)
        )
        return await _pass_through(request, call, model, ticket)
    run_request = RunRequest(
        content=call.content,
        model=model,
        history=call.history,
        system_prompt=call.system,
        timeout_secs=settings.job_timeout_secs,
        idle_timeout_secs=settings.idle_timeout_secs,
        max_tokens=call.max_tokens,
        stop_sequences=call.stop_sequences,
        temperature=call.temperature,
        top_p=call.top_p,
        owner=key.id,
    )
    ticket = await admit(request, key, "anthropic", estimate_run(run_request))
    turn = Turn(request, key, "anthropic", run_request, ticket)
    await turn.start()
    if call.stream:
        return await _stream_turn(turn, model)
    result = await turn.answer()
    if result is None:
        return Response(status_code=499)
    return JSONResponse(message_object(turn.message_id, result, model))


def _usage(result: RunResult) -> dict[str, Any]:
    usage = result.usage or {}
    return {
        "input_tokens": int(usage.get("input_tokens") or 0),
        "output_tokens": int(usage.get("output_tokens") or 0),
        "cache_creation_input_tokens": int(usage.get("cache_creation_input_tokens") or 0),
        "cache_read_input_tokens": int(usage.get("cache_read_input_tokens") or 0),
    }


def message_object(message_id: str, result: RunResult, model: str) -> dict[str, Any]:
    """A finished turn as the Messages API's message object."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": result.model or model,
        "content": [{"type": "text", "text": result.text}],
        "stop_reason": result.stop_reason or "end_turn",
        "stop_sequence": None,
        "usage": _usage(result),
    }


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event with its ``event:`` line."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _stream_turn(turn: Turn, model: str) -> Response:
    first, events = await turn.open_stream()
    return ClosingStreamingResponse(
        _turn_events(turn, model, first, events), on_close=lambda: turn.close_stream(events)
    )


async def _turn_events(
    turn: Turn, model: str, first: Any, events: AsyncGenerator[Any, None]
) -> AsyncIterator[bytes]:
    """message_start, one text block of deltas, message_delta, message_stop."""
    sent = 0
    try:
        yield sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": turn.message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            },
        )
        yield sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        event = first
        while True:
            if event is None:
                yield sse("ping", {"type": "ping"})
            elif isinstance(event, TextDelta) and event.text:
                sent += len(event.text)
                yield _text_delta(event.text)
            elif isinstance(event, RunResult):
                if len(event.text) > sent:  # a backend that sent no (or partial) deltas
                    yield _text_delta(event.text[sent:])
                yield sse("content_block_stop", {"type": "content_block_stop", "index": 0})
                yield sse(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {
                            "stop_reason": event.stop_reason or "end_turn",
                            "stop_sequence": None,
                        },
                        "usage": _usage(event),
                    },
                )
                yield sse("message_stop", {"type": "message_stop"})
                return
            event = await anext(events, StopAsyncIteration)
            if event is StopAsyncIteration:
                raise ApiError("upstream_error", "the run ended without an answer")
    except ApiError as exc:
        yield sse("error", error_body("anthropic", request_id_of(turn.request), exc))


def _text_delta(text: str) -> bytes:
    return sse(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
    )


async def _pass_through(request: Request, call: MessagesCall, model: str, ticket: Any) -> Response:
    """The API backend: send the body upstream as the client wrote it, model resolved."""
    runner = services_of(request).backend.require_passthrough()
    body = {**call.raw, "model": model}
    facts = audit_facts(request)

    async def upstream_call(opening: Awaitable[T]) -> T:
        try:
            return await opening
        except RunError as exc:
            await ticket.finish()
            facts["error_type"] = exc.error_type
            raise api_error_of(exc) from None

    if not call.stream:
        reply = await upstream_call(runner.send(body, request.headers))
        cost = cost_usd(reply.model or model, reply.usage)
        facts.update(
            input_tokens=reply.usage.get("input_tokens"),
            output_tokens=reply.usage.get("output_tokens"),
            cost_usd=cost,
            job_status="completed",
        )
        await ticket.finish(reply.usage, cost)
        if not reply.body:
            return JSONResponse(reply.json, status_code=reply.status, headers=reply.headers)
        # Upstream's bytes as they came: parsing them again only to re-encode them costs time.
        return Response(
            reply.body,
            status_code=reply.status,
            headers=reply.headers,
            media_type="application/json",
        )
    upstream = await upstream_call(runner.open_stream(body, request.headers))

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream:
                yield chunk
        except RunError as exc:
            facts["error_type"] = exc.error_type
            yield sse("error", error_body("anthropic", request_id_of(request), api_error_of(exc)))

    async def close() -> None:
        await upstream.aclose()
        cost = cost_usd(upstream.model or model, upstream.usage)
        facts.update(
            input_tokens=upstream.usage.get("input_tokens"),
            output_tokens=upstream.usage.get("output_tokens"),
            cost_usd=cost,
            job_status="completed" if upstream.completed else "failed",
        )
        await ticket.finish(upstream.usage, cost)

    headers = dict(upstream.headers)
    headers.pop("content-type", None)
    return ClosingStreamingResponse(
        relay(), on_close=close, status_code=upstream.status, headers=headers
    )


@router.post("/messages/count_tokens", summary="Count the tokens of a Messages request")
async def count_tokens(request: Request, key: CallerKey) -> Response:
    """Forwarded upstream on the API backend; an estimate on the CLI backend.

    Admitted like a message (the key's models, request limits and concurrency) but it spends
    no tokens or budget.
    """
    body = await read_json_object(request)
    requested = body.get("model")
    if not isinstance(requested, str) or not requested:
        raise bad("model: field required", "model")
    model = resolve_model(request, key, requested)
    if services_of(request).settings.backend == "api":
        ticket = await admit(request, key, "anthropic", spends=False)
        try:
            answer = (
                await services_of(request)
                .backend.require_passthrough()
                .count_tokens({**body, "model": model}, request.headers)
            )
        except RunError as exc:
            raise api_error_of(exc) from None
        finally:
            await ticket.finish()
        return JSONResponse(answer)
    turns = _messages(body.get("messages"))
    system = _system_text(body.get("system"))
    ticket = await admit(request, key, "anthropic", spends=False)
    await ticket.finish()  # the estimate is computed right here: nothing keeps running
    return JSONResponse({"input_tokens": estimate_tokens(system, turns)})


def estimate_tokens(system: str | None, turns: list[dict[str, Any]]) -> int:
    """The CLI backend's estimate: ~4 characters of text per token, ~1,600 tokens per image
    (the most one image costs), ~1,500 tokens per 100 KB of PDF; documented."""
    chars = len(system or "")
    images = documents = 0
    for turn in turns:
        for block in turn["content"]:
            if block["type"] == "text":
                chars += len(block["text"])
            elif block["type"] == "image":
                images += 1
            elif block["type"] == "document":
                source = block["source"]
                if source["type"] == "text":
                    chars += len(source["data"])
                else:
                    documents += max(1, math.ceil(len(source["data"]) * 3 / 4 / 100_000))
    return max(1, math.ceil(chars / 4) + 1_600 * images + 1_500 * documents + 4 * len(turns))
