"""The HTTP server process: uvicorn, told to refuse new jobs the moment a stop signal lands."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import FrameType

import uvicorn


class GatewayServer(uvicorn.Server):
    """uvicorn's server; on SIGTERM/SIGINT it first calls ``on_stop`` (the queue stops
    taking jobs and SSE streams end), then lets uvicorn drain connections as usual."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_stop = on_stop
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        """Serve, remembering the loop so the signal handler can reach it safely."""
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Stop taking jobs, then shut down as uvicorn does."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_stop)
        super().handle_exit(sig, frame)
