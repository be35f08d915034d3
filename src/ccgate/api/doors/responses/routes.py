"""The Responses door's routes: ``POST /v1/responses``, ``GET``/``DELETE /v1/responses/{id}``.

A request (``request``) becomes a turn like the chat door's: a job on the CLI
backend, a direct run on the API backend, a pass-through call when it uses function tools (API
backend only, ``tools``); ``text.format`` json_schema answers are validated with one
repair (``Turn.answer_structured``). The answer is rendered as a Response or its event stream
(``render``).

``store`` (default true) keeps the finished Response for its key, with the conversation through
its answer, for ``CCGATE_SESSION_TTL_HOURS``: ``GET`` returns it, ``DELETE`` removes it, and
``previous_response_id`` continues it (its turns become the new turn's history, replayed by the
CLI like a native session's). Each stored Response keeps its own conversation, so a client may
branch from any earlier one. Another key's, an unknown, expired or deleted id is a 404.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ccgate.api.admission import resolve_model
from ccgate.api.auth import require_key
from ccgate.api.content import conversation_bytes
from ccgate.api.deps import services_of
from ccgate.api.doors.responses.render import (
    ResponseStream,
    new_response_id,
    render_response,
)
from ccgate.api.doors.responses.request import (
    ResponsesCall,
    WireError,
    check_format_schema,
    parse_request,
)
from ccgate.api.doors.responses.tools import tool_response
from ccgate.api.errors import client_message
from ccgate.api.lifecycle import Turn, client_closed
from ccgate.api.middleware import audit_facts
from ccgate.api.request_body import check_prompt_size, check_unicode, read_json_object
from ccgate.api.run_body import JSON_ONLY_INSTRUCTION
from ccgate.api.streaming import ClosingStreamingResponse
from ccgate.clock import timestamp, utcnow
from ccgate.errors import ApiError
from ccgate.limits.estimate import conversation_size, estimate_run
from ccgate.runners.base import RunRequest, RunResult
from ccgate.store import KeyRecord, StoredResponse

router = APIRouter(prefix="/v1", tags=["openai"])
CallerKey = Annotated[KeyRecord, Depends(require_key)]
_KEEP_ALIVE = b": keep-alive\n\n"


def _not_found(response_id: str, param: str | None = None) -> ApiError:
    return ApiError(
        "not_found",
        f"no response {response_id!r} (unknown, expired, deleted, not stored or another key's)",
        param=param,
    )


def _assistant_turn(output: list[dict[str, Any]]) -> dict[str, Any]:
    """A Response's output items as the Anthropic assistant turn they stand for."""
    blocks: list[dict[str, Any]] = []
    for item in output:
        if item.get("type") == "message":
            text = "".join(str(part.get("text") or "") for part in item.get("content") or [])
            if text:
                blocks.append({"type": "text", "text": text})
        elif item.get("type") == "function_call":
            try:
                arguments = json.loads(item.get("arguments") or "{}")
            except ValueError:  # upstream's own arguments; kept as a call without input
                arguments = {}
            blocks.append(
                {
                    "type": "tool_use",
                    "id": item["call_id"],
                    "name": item["name"],
                    "input": arguments,
                }
            )
    # An empty text block is refused upstream.
    return {"role": "assistant", "content": blocks or [{"type": "text", "text": "(empty)"}]}


@dataclass(frozen=True)
class _Keeper:
    """Stores a finished Response (``store: true``) with the conversation through it."""

    request: Request
    key: KeyRecord
    call: ResponsesCall

    async def __call__(self, response: dict[str, Any]) -> None:
        if not self.call.store or response.get("status") not in ("completed", "incomplete"):
            return
        services = services_of(self.request)
        now = utcnow()
        messages = [
            *self.call.history,
            {"role": "user", "content": self.call.content},
            _assistant_turn(response["output"]),
        ]
        await services.store.responses.save(
            StoredResponse(
                id=response["id"],
                key_id=self.key.id,
                response=response,
                messages=messages,
                created_at=now,
                expires_at=now + timedelta(hours=services.settings.session_ttl_hours),
            )
        )


@router.post("/responses", summary="OpenAI Responses API")
async def create_response(request: Request, key: CallerKey) -> Response:
    """Answer like ``POST /v1/responses`` of the OpenAI API, streaming or not."""
    body = await read_json_object(request)
    check_unicode(body)
    services = services_of(request)
    settings = services.settings
    tools_allowed = services.backend.capabilities.client_tools
    call = parse_request(body, tools_allowed=tools_allowed, schema_check=None)
    if call.tools is not None and call.json_schema is not None:
        raise WireError(
            "text.format: json_schema cannot be combined with function tools", "text.format"
        )
    call = await check_format_schema(call)
    model = resolve_model(request, key, call.model)
    if call.previous_response_id is not None:
        earlier = await services.store.responses.get(
            call.previous_response_id, key_id=key.id, now=utcnow()
        )
        if earlier is None:
            raise _not_found(call.previous_response_id, "previous_response_id")
        call = call.continued(earlier.messages)
    size = conversation_bytes(call.system, call.history, call.content)
    if call.tools:
        size += len(json.dumps(call.tools, ensure_ascii=False).encode())
    check_prompt_size(size, settings.max_prompt_bytes)
    facts = audit_facts(request)
    facts.model, facts.prompt_bytes = model, size
    if settings.audit_prompts:
        facts.prompt_text = json.dumps(body.get("input"), ensure_ascii=False)
    run_request = RunRequest(
        content=call.content,
        model=model,
        history=call.history,
        system_prompt=call.system,
        append_system_prompt=JSON_ONLY_INSTRUCTION if call.json_only else None,
        timeout_secs=settings.job_timeout_secs,
        idle_timeout_secs=settings.idle_timeout_secs,
        max_tokens=call.max_tokens,
        temperature=call.temperature,
        top_p=call.top_p,
        owner=key.id,
    )
    definitions = conversation_size(None, [], call.tools) if call.tools else None
    turn = await Turn.admit(
        request, key, "openai", estimate_run(run_request, definitions), run_request=run_request
    )
    response_id, created_at = new_response_id(), int(timestamp())
    keep = _Keeper(request, key, call)
    if call.tools is not None:
        return await tool_response(
            turn, call, response_id=response_id, created_at=created_at, keep=keep
        )
    if call.json_schema is not None:
        result = await turn.answer_structured(call.json_schema)
    else:
        await turn.start()
        if call.stream:
            return await _stream(turn, call, response_id, created_at, keep)
        result = await turn.answer()
    if result is None:
        return client_closed()
    if call.stream:  # a structured answer, validated before its first byte goes out
        return await _whole_stream(call, result, response_id, created_at, keep)
    response = render_response(
        call,
        response_id=response_id,
        created_at=created_at,
        model=result.model or model,
        text=result.text,
        usage=result.usage,
        stop_reason=result.stop_reason,
    )
    await keep(response)
    return JSONResponse(response)


@router.get("/responses/{response_id}", summary="Retrieve a stored Response")
async def get_response(request: Request, key: CallerKey, response_id: str) -> Response:
    """The key's stored Response by that id (404 when unknown, expired, deleted or not the
    key's)."""
    stored = await services_of(request).store.responses.get(
        response_id, key_id=key.id, now=utcnow()
    )
    if stored is None:
        raise _not_found(response_id)
    return JSONResponse(stored.response)


@router.delete("/responses/{response_id}", summary="Delete a stored Response")
async def delete_response(request: Request, key: CallerKey, response_id: str) -> Response:
    """Delete the key's stored Response; a later GET or previous_response_id to it is 404."""
    deleted = await services_of(request).store.responses.delete(
        response_id, key_id=key.id, now=utcnow()
    )
    if not deleted:
        raise _not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


@dataclass
class _Frames:
    """The turn's events as Responses stream events (``Turn.stream``'s renderer)."""

    stream: ResponseStream
    finished: dict[str, Any] | None = None

    def opening(self) -> list[bytes]:
        """``response.created`` and ``response.in_progress``."""
        return self.stream.start()

    def ping(self) -> bytes:
        """An SSE comment."""
        return _KEEP_ALIVE

    def text(self, text: str) -> bytes:
        """A text delta (after the message item's opening events, the first time)."""
        return b"".join(self.stream.text(text))

    def closing(self, result: RunResult) -> list[bytes]:
        """The open item closed, then ``response.completed`` (or ``incomplete``) with usage."""
        frames = self.stream.finish(
            usage=result.usage, stop_reason=result.stop_reason, model=result.model
        )
        self.finished = self.stream.response
        return frames

    def error(self, error: ApiError) -> bytes:
        """``response.failed`` with the error."""
        return b"".join(self.stream.fail(error.error_type, client_message(error)))


async def _stream(
    turn: Turn, call: ResponsesCall, response_id: str, created_at: int, keep: _Keeper
) -> Response:
    assert turn.run_request is not None
    stream = ResponseStream(
        call, response_id=response_id, created_at=created_at, model=turn.run_request.model
    )
    frames = _Frames(stream)
    streaming = await turn.stream(frames)
    assert isinstance(streaming, ClosingStreamingResponse)
    inner = streaming.body_iterator

    async def keeping() -> AsyncIterator[bytes]:
        # The Response is stored before its closing events go out, so a retrieve right after
        # the stream ends finds it.
        kept = False
        async for frame in inner:
            if frames.finished is not None and not kept:
                kept = True
                await keep(frames.finished)
            yield frame if isinstance(frame, bytes) else str(frame).encode()

    streaming.body_iterator = keeping()
    return streaming


async def _whole_stream(
    call: ResponsesCall, result: RunResult, response_id: str, created_at: int, keep: _Keeper
) -> Response:
    """The stream of an answer already complete (and validated): one text delta."""
    stream = ResponseStream(call, response_id=response_id, created_at=created_at)
    frames = [
        *stream.start(),
        *stream.text(result.text),
        *stream.finish(usage=result.usage, stop_reason=result.stop_reason, model=result.model),
    ]
    await keep(stream.response)

    async def send() -> AsyncIterator[bytes]:
        for frame in frames:
            yield frame

    return ClosingStreamingResponse(send(), on_close=_nothing)


async def _nothing() -> None:
    return None
