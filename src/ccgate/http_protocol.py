"""uvicorn's httptools protocol, writing each answer's headers and first body bytes together.

uvicorn writes a response's status line and headers on ``http.response.start`` and its body on
``http.response.body``: two socket writes, two TCP segments, two wake-ups of the client for
every answer. ``CoalescingHttpToolsProtocol`` holds the header bytes until the first body
message and sends both in one write. Nothing waits for it: a response's first body message
always flushes what is held (a streamed answer's headers leave with its first event), a first
body message without bytes (a 204, an empty chunk) still flushes them, a HEAD answer is not
held at all, and a connection closed mid-response (an app error after the start) flushes
first, as uvicorn would have sent them. Everything else is uvicorn's own code: keep-alive,
pipelining, 100-continue, Content-Length and chunked framing, flow control, disconnect
detection.

It leans on uvicorn internals (``HttpToolsProtocol._start_asgi_task``, ``RequestResponseCycle``
and its ``transport``, ``scope``, ``response_started``, ``disconnected`` and ``send``):
pyproject pins uvicorn's minor version and tests/unit/test_http_protocol.py fails loudly when
they change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from uvicorn._types import ASGI3Application, ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class HeldWrites:
    """A connection's transport, able to hold one write (the headers) until the next one."""

    __slots__ = ("_holding", "held", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._holding = False
        self.held: bytes | None = None

    def hold_next(self) -> None:
        """Keep the next write back until a later write, ``flush`` or ``close``."""
        self._holding = True

    def stop_holding(self) -> None:
        """Forget a ``hold_next`` that no write used (the start was refused or not sent)."""
        self._holding = False

    def write(self, data: bytes) -> None:
        """Write ``data``, after any held bytes, in one transport write."""
        if self._holding:
            self._holding = False
            self.held = data
            return
        held = self.held
        if held is not None:
            self.held = None
            data = held + data
        self.transport.write(data)

    def flush(self) -> None:
        """Write what is held now."""
        held = self.held
        if held is not None:
            self.held = None
            self.transport.write(held)

    def close(self) -> None:
        """Flush, then close the transport."""
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        """The transport's own answer."""
        return self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        # Anything else uvicorn may ask of a transport is the transport's own.
        return getattr(self.transport, name)


class CoalescingCycle(RequestResponseCycle):
    """uvicorn's request/response cycle whose headers wait for the first body message.

    Only the start and the first body message go through ``HeldWrites``; the cycle's transport
    is the socket's own before and after, so a stream's later chunks cost what they did.
    """

    held_writes: HeldWrites

    def send(self, message: ASGISendEvent) -> Awaitable[None]:  # type: ignore[override]
        """uvicorn's ``send``; the start's bytes are held, the first body message's flush them."""
        if self.response_started:
            if self.held_writes.held is None:
                return RequestResponseCycle.send(self, message)
            return self._send_first_body(message)
        if self.scope["method"] == "HEAD":  # no body will follow: nothing to join
            return RequestResponseCycle.send(self, message)
        return self._send_start(message)

    async def _send_start(self, message: ASGISendEvent) -> None:
        out = self.held_writes
        self.transport = out  # type: ignore[assignment]
        out.hold_next()
        try:
            await RequestResponseCycle.send(self, message)
        finally:
            out.stop_holding()
            if out.held is None:
                self.transport = out.transport
        # Else the transport stays ``out`` until the first body: an app error closes it, and
        # its close sends the held headers first, as uvicorn would have sent them already.

    async def _send_first_body(self, message: ASGISendEvent) -> None:
        out = self.held_writes
        try:
            await RequestResponseCycle.send(self, message)
        finally:
            if out.held is not None and not self.disconnected:
                out.flush()  # a body message that wrote nothing still sends the headers
            out.held = None
            self.transport = out.transport


def coalesce(cycle: RequestResponseCycle, out: HeldWrites) -> None:
    """Make ``cycle`` (uvicorn's, not yet running) a ``CoalescingCycle`` writing through ``out``.

    Same attributes, one method overridden: the cycle was built by uvicorn's
    ``on_headers_complete`` and only its class changes.
    """
    cycle.__class__ = CoalescingCycle
    cycle.held_writes = out  # type: ignore[attr-defined]


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol running ``CoalescingCycle``s over one ``HeldWrites``."""

    _held_writes: HeldWrites | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """uvicorn's set-up, plus the connection's ``HeldWrites``."""
        super().connection_made(transport)
        self._held_writes = HeldWrites(transport)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        if self._held_writes is not None:
            coalesce(cycle, self._held_writes)
        super()._start_asgi_task(cycle, app)
