"""Messages SSE streams: the message reader and the pass-through stream.

``MessageReader`` turns the lines of one stream into RunEvents, usage and errors: the API
runner builds its events with it, and ``UpstreamStream`` (what the pass-through client's
``open_stream`` returns) reads usage, model, stop reason and error events off the side with it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import httpx

from ccgate.pricing import cost_usd
from ccgate.runners.anthropic_errors import error_detail, event_error
from ccgate.runners.base import RunError, RunEvent, RunResult, RunStarted, TextDelta

if TYPE_CHECKING:
    from ccgate.runners.anthropic_client import Answer, AnthropicClient

_SCAN_TAIL_LIMIT = 1024 * 1024
# Wraps a stream's chunk iteration without changing the chunks (metrics time it).
ChunkObserver = Callable[[AsyncGenerator[bytes, None]], AsyncGenerator[bytes, None]]


def merge_usage(usage: dict[str, int], raw: object) -> None:
    """Copy the ``*_tokens`` counts of an upstream ``usage`` object into ``usage``."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            if key.endswith("_tokens") and isinstance(value, int) and not isinstance(value, bool):
                usage[key] = value


class MessageReader:
    """Turns the lines of one Messages SSE stream into RunEvents."""

    def __init__(self, model: str | None, clean: Callable[[str], str]) -> None:
        self.model = model
        self._clean = clean
        self.usage: dict[str, int] = {}
        self.stop_reason: str | None = None
        self.stopped = False
        self._parts: list[str] = []

    def feed(self, data: str | bytes) -> RunEvent | RunError | None:
        """The event an SSE ``data:`` payload stands for, a RunError for an error event, or
        None."""
        try:
            event = json.loads(data)
        except ValueError:
            return None
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "content_block_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta" and delta.get("text"):
                self._parts.append(str(delta["text"]))
                return TextDelta(self._parts[-1])
        elif kind == "message_start" and isinstance(event.get("message"), dict):
            message = event["message"]
            if isinstance(message.get("model"), str):
                self.model = message["model"]
            merge_usage(self.usage, message.get("usage"))
            return RunStarted(session_id=None, model=self.model)
        elif kind == "message_delta":
            merge_usage(self.usage, event.get("usage"))
            delta = event.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self.stop_reason = delta["stop_reason"]
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            return event_error(event, self._clean(error_detail(event)[1]))
        return None

    def result(self, duration_ms: int) -> RunResult:
        """The RunResult once message_stop was seen."""
        usage = {"input_tokens": 0, "output_tokens": 0, **self.usage}
        return RunResult(
            text="".join(self._parts),
            model=self.model,
            usage=usage,
            cost_usd=cost_usd(self.model, usage) if self.model else None,
            duration_ms=duration_ms,
            stop_reason=self.stop_reason,
        )


class UpstreamStream:
    """A 2xx streaming answer, passed on byte for byte while usage is read off the side.

    Iterate it once for the raw SSE bytes as they arrive; it raises RunError if the stream
    breaks off (bytes already yielded stay yielded). An ``event: error`` inside the stream is
    passed through like any other event and also kept in ``error``.
    """

    def __init__(self, client: AnthropicClient, response: Answer) -> None:
        self.status = response.status_code
        self.headers = client.passable_headers(response)
        self.error: RunError | None = None
        self._client = client
        self._response = response
        self._reader = MessageReader(None, client.redact)
        self._tail = b""
        # Wraps the chunk iteration, e.g. to time it (metrics); set before iterating.
        self.observe: ChunkObserver | None = None

    @property
    def usage(self) -> dict[str, int]:
        """The tokens upstream reported so far."""
        return self._reader.usage

    @property
    def model(self) -> str | None:
        """The model upstream named in its message_start."""
        return self._reader.model

    @property
    def stop_reason(self) -> str | None:
        """Why the message stopped, once message_delta said so."""
        return self._reader.stop_reason

    @property
    def completed(self) -> bool:
        """True once message_stop went by."""
        return self._reader.stopped

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield upstream's bytes unchanged, as they arrive (through ``observe`` when set)."""
        chunks = self._chunks() if self.observe is None else self.observe(self._chunks())
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in self._response.aiter_bytes():
                self._scan(chunk)
                yield chunk
        except httpx.TransportError as exc:
            raise self._client.transport_failure(exc) from None
        if not self.completed and self.error is None:
            raise self._client.broken_off()

    async def aclose(self) -> None:
        """Close the upstream response (the connection goes back to the pool when read)."""
        await self._response.aclose()

    async def __aenter__(self) -> UpstreamStream:
        """Use as ``async with``: closed at the end."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the upstream response."""
        await self.aclose()

    def _scan(self, chunk: bytes) -> None:
        # Only whole lines are parsed, and only the few that can carry usage or an error.
        data = self._tail + chunk if self._tail else chunk
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            line = data[start:end]
            start = end + 1
            if line.startswith(b"data:") and (b"message_" in line or b"error" in line):
                event = self._reader.feed(line[5:])
                if isinstance(event, RunError):
                    self.error = self._client.event_failure(event)
        self._tail = data[start:] if len(data) - start <= _SCAN_TAIL_LIMIT else b""


# The largest server-sent event the doors translate (an upstream tool call's arguments included).
MAX_EVENT_BYTES = 16 * 1024 * 1024


async def sse_payloads(
    chunks: AsyncIterable[bytes], max_event_bytes: int = MAX_EVENT_BYTES
) -> AsyncIterator[Any]:
    """The JSON payload of each server-sent event in a byte stream (None if not JSON).

    Linear in the stream's size whatever its chunking: each chunk is scanned once and a line
    cut across chunks is joined once. An event bigger than ``max_event_bytes`` fails the stream.
    """
    partial: list[bytes] = []  # the start of a line that has not ended yet
    data: list[bytes] = []  # the data lines of the event being read
    size = 0
    async for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            piece = chunk[start:end]
            line = b"".join((*partial, piece)) if partial else piece
            partial.clear()
            start = end + 1
            line = line.rstrip(b"\r")
            if line.startswith(b"data:"):
                data.append(line[5:])
            elif not line and data:
                yield _json_or_none(b"\n".join(data))
                data.clear()
                size = 0
        if start < len(chunk):
            partial.append(chunk[start:])
        size += len(chunk)
        if size > max_event_bytes:
            raise RunError("upstream_error", "the upstream sent an event too large to read")
    if data:
        yield _json_or_none(b"\n".join(data))


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
