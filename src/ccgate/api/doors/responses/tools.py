"""The Responses door's function tools on the API backend: the turn goes upstream as written.

Like the chat door's tool calling, a request with tools is a pass-through call (tool use is
the client's business; nothing runs here): its Anthropic body goes upstream, and the answer
(whole, or its stream of Anthropic events) comes back as a Response with ``function_call``
items. Only the API backend gets here: the CLI backend refuses tools with a 400 when parsing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import JSONResponse, Response

from ccgate.api.deps import services_of
from ccgate.api.doors.responses.render import ResponseStream, render_response, tool_calls_of
from ccgate.api.doors.responses.request import ResponsesCall
from ccgate.api.errors import client_message
from ccgate.api.lifecycle import Turn
from ccgate.errors import ApiError
from ccgate.runners.anthropic_api import message_body
from ccgate.runners.anthropic_sse import UpstreamStream, sse_payloads
from ccgate.runners.base import RunError

# Stores a finished Response (when the request asked for it) before the client sees it end.
Keep = Callable[[dict[str, Any]], Awaitable[None]]


async def tool_response(
    turn: Turn,
    call: ResponsesCall,
    *,
    response_id: str,
    created_at: int,
    keep: Keep,
) -> Response:
    """Answer a Responses request that uses tools straight from the upstream API.

    The turn's ticket is settled with the upstream's usage however the request ends.
    """
    assert turn.run_request is not None
    assert call.tools is not None
    passthrough = services_of(turn.request).backend.require_passthrough()
    body = {**message_body(turn.run_request), **call.tools, "stream": call.stream}
    model = turn.run_request.model
    if call.stream:
        upstream: UpstreamStream = await turn.upstream(passthrough.open_stream(body, {}))
        stream = ResponseStream(call, response_id=response_id, created_at=created_at, model=model)

        async def close() -> None:
            await upstream.aclose()
            await _settle(turn, upstream.model or model, upstream.usage, upstream.completed)

        def error_frame(error: ApiError) -> bytes:
            return b"".join(stream.fail(error.error_type, client_message(error)))

        return turn.relay(_frames(upstream, stream, keep), error_frame, close)
    reply = await turn.upstream(passthrough.send(body, {}))
    await _settle(turn, reply.model or model, reply.usage, True)
    blocks = [b for b in reply.json.get("content") or [] if isinstance(b, dict)]
    text, calls = tool_calls_of(blocks)
    response = render_response(
        call,
        response_id=response_id,
        created_at=created_at,
        model=reply.model or model,
        text=text,
        tool_calls=calls,
        usage=reply.usage,
        stop_reason=reply.stop_reason,
    )
    turn.facts.response_bytes = len(json.dumps(response["output"], ensure_ascii=False).encode())
    await keep(response)
    return JSONResponse(response)


async def _settle(turn: Turn, model: str, usage: dict[str, int], completed: bool) -> None:
    turn.facts.model = model
    await turn.settle_upstream(model, usage, completed=completed)


async def _frames(
    upstream: UpstreamStream, stream: ResponseStream, keep: Keep
) -> AsyncIterator[bytes]:
    """``response.created`` …, the output items as upstream writes them, then the end (the
    Response kept first, so a retrieve right after the stream finds it)."""
    for frame in stream.start():
        yield frame
    async for event in sse_payloads(upstream):
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "error":
            raise upstream.error or RunError("upstream_error", "the upstream stream failed")
        if kind == "ping":
            yield b": keep-alive\n\n"
        elif isinstance(event, dict):
            for frame in stream.anthropic_event(event):
                yield frame
    ending = stream.finish(
        usage=upstream.usage, stop_reason=upstream.stop_reason, model=upstream.model
    )
    await keep(stream.response)
    for frame in ending:
        yield frame
