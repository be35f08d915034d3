"""The Anthropic door: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

Existing Anthropic SDKs and tools point their base URL at ccgate and keep working: requests,
responses, the SSE event sequence and errors follow the Messages API. On the CLI backend each
request is a job on the shared queue; on the API backend it is passed upstream as sent (model
resolved, headers filtered) and the answer streams back byte for byte. Admission, running
and settlement are the turn lifecycle's (``api/lifecycle.py``); this module parses and renders.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ccgate.api.admission import resolve_model
from ccgate.api.auth import require_key
from ccgate.api.content import bad, conversation_bytes
from ccgate.api.deps import services_of
from ccgate.api.errors import error_body, request_id_of
from ccgate.api.lifecycle import Turn, client_closed
from ccgate.api.messages_body import (
    MessagesCall,
    message_object,
    message_turns,
    parse_messages_call,
    system_text,
)
from ccgate.api.middleware import audit_facts
from ccgate.api.request_body import check_prompt_size, check_unicode, read_json_object
from ccgate.errors import ApiError
from ccgate.limits.estimate import RunEstimate, conversation_size, estimate_run
from ccgate.runners.base import RunResult
from ccgate.store import KeyRecord
from ccgate.turns import Usage

router = APIRouter(prefix="/v1", tags=["anthropic"])
CallerKey = Annotated[KeyRecord, Depends(require_key)]


async def _read_call(request: Request) -> MessagesCall:
    body = await read_json_object(request)
    check_unicode(body, await request.body())
    tools_allowed = services_of(request).backend.capabilities.client_tools
    return parse_messages_call(body, tools_allowed=tools_allowed)


@router.post("/messages", summary="Anthropic Messages API (create a message)")
async def create_message(request: Request, key: CallerKey) -> Response:
    """Answer like ``POST /v1/messages`` of the Anthropic API, streaming or not."""
    call = await _read_call(request)
    model = resolve_model(request, key, call.model)
    services = services_of(request)
    settings = services.settings
    passed_through = services.backend.capabilities.passthrough
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
    check_prompt_size(size, settings.max_prompt_bytes)
    facts = audit_facts(request)
    facts.model, facts.prompt_bytes = model, size
    if settings.audit_prompts:
        facts.prompt_text = json.dumps(call.raw.get("messages"), ensure_ascii=False)
    if measured is not None:
        turn = await Turn.admit(
            request, key, "anthropic", RunEstimate(model, measured.tokens, call.max_tokens)
        )
        return await _pass_through(turn, call, model)
    run_request = call.run_request(model, settings, owner=key.id)
    turn = await Turn.admit(
        request, key, "anthropic", estimate_run(run_request), run_request=run_request
    )
    await turn.start()
    if call.stream:
        return await turn.stream(_MessageStream(turn, model))
    result = await turn.answer()
    if result is None:
        return client_closed()
    return JSONResponse(message_object(turn.message_id, result, model))


async def create_message_lean(request: Request) -> Response:
    """``create_message`` on the lean path (``api/lean.py``): the key is read here instead of
    by FastAPI's dependency, in the same order (key, then body)."""
    return await create_message(request, await require_key(request))


def _usage(result: RunResult) -> dict[str, int]:
    return Usage.from_mapping(result.usage).as_dict()


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event with its ``event:`` line."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


# A content_block_delta event as ``sse`` writes it, up to its text.
_TEXT_DELTA = (
    'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
    '"delta": {"type": "text_delta", "text": '
)


@dataclass
class _MessageStream:
    """message_start, one text block of deltas, message_delta, message_stop."""

    turn: Turn
    model: str

    def opening(self) -> list[bytes]:
        """message_start and the text block's start."""
        return [
            sse(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": self.turn.message_id,
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": 0, "output_tokens": 0},
                    },
                },
            ),
            sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
        ]

    def ping(self) -> bytes:
        """A ping event."""
        return sse("ping", {"type": "ping"})

    def text(self, text: str) -> bytes:
        """One text_delta (``sse`` of it, the text the only part encoded per frame)."""
        return f"{_TEXT_DELTA}{json.dumps(text, ensure_ascii=False)}}}}}\n\n".encode()

    def closing(self, result: RunResult) -> list[bytes]:
        """The block's stop, the stop reason with the usage, message_stop."""
        return [
            sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": result.stop_reason or "end_turn",
                        "stop_sequence": None,
                    },
                    "usage": _usage(result),
                },
            ),
            sse("message_stop", {"type": "message_stop"}),
        ]

    def error(self, error: ApiError) -> bytes:
        """An error event in the Anthropic shape."""
        return _error_event(self.turn.request, error)


def _error_event(request: Request, error: ApiError) -> bytes:
    return sse("error", error_body("anthropic", request_id_of(request), error))


async def _pass_through(turn: Turn, call: MessagesCall, model: str) -> Response:
    """The API backend: send the body upstream as the client wrote it, model resolved."""
    request = turn.request
    runner = services_of(request).backend.require_passthrough()
    body = {**call.raw, "model": model}
    if not call.stream:
        reply = await turn.upstream(runner.send(body, request.headers))
        await turn.settle_upstream(reply.model or model, reply.usage, completed=True)
        if not reply.body:
            return JSONResponse(reply.json, status_code=reply.status, headers=reply.headers)
        # Upstream's bytes as they came: parsing them again only to re-encode them costs time.
        return Response(
            reply.body,
            status_code=reply.status,
            headers=reply.headers,
            media_type="application/json",
        )
    upstream = await turn.upstream(runner.open_stream(body, request.headers))

    async def close() -> None:
        await upstream.aclose()
        await turn.settle_upstream(
            upstream.model or model, upstream.usage, completed=upstream.completed
        )

    headers = dict(upstream.headers)
    headers.pop("content-type", None)
    return turn.relay(
        upstream,
        lambda error: _error_event(request, error),
        close,
        status_code=upstream.status,
        headers=headers,
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
    backend = services_of(request).backend
    if backend.capabilities.counts_tokens:
        turn = await Turn.admit(request, key, "anthropic", spends=False)
        answer = await turn.upstream(
            backend.require_passthrough().count_tokens({**body, "model": model}, request.headers)
        )
        await turn.settle()
        return JSONResponse(answer)
    turns = message_turns(body.get("messages"))
    system = system_text(body.get("system"))
    turn = await Turn.admit(request, key, "anthropic", spends=False)
    await turn.settle()  # the estimate is computed right here: nothing keeps running
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
