"""A stand-in for an asyncio transport that records each write, for tests of what leaves a
uvicorn protocol (how many writes, which bytes)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle


class RecordingTransport:
    """Records each write; a stand-in for an asyncio transport."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        """Keep ``data`` as one write."""
        self.writes.append(data)

    def close(self) -> None:
        """Mark the transport closed."""
        self.closed = True

    def is_closing(self) -> bool:
        """True once closed."""
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """No extra information: ``default``."""
        return default

    def pause_reading(self) -> None:
        """Nothing to pause."""

    def resume_reading(self) -> None:
        """Nothing to resume."""


def uvicorn_cycle(transport: RecordingTransport, scope: Any) -> RequestResponseCycle:
    """uvicorn's request/response cycle for ``scope``, writing to ``transport``, as its
    httptools protocol builds one (keep-alive, no access log)."""
    return RequestResponseCycle(
        scope=scope,
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=True,
        on_response=lambda: None,
    )
