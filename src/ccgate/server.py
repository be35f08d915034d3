"""The HTTP server process: uvicorn, told to refuse new jobs the moment a stop signal lands."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn


class GatewayServer(uvicorn.Server):
    """uvicorn's server; on SIGTERM/SIGINT it first calls ``on_stop`` (the queue stops
    taking jobs and SSE streams end), then lets uvicorn drain connections as usual.

    As one of several workers (``ccgate serve --workers N``, ``worker_of`` the supervisor's
    pid) it serves the sockets it is given, writes one byte to ``ready_fd`` once it accepts
    requests, stops the same way when its supervisor is gone, and exits with 0 after a
    graceful stop instead of re-raising the signal."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_stop: Callable[[], None],
        *,
        worker_of: int | None = None,
        ready_fd: int | None = None,
    ) -> None:
        super().__init__(config)
        self._on_stop = on_stop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker_of = worker_of
        self._ready_fd = ready_fd

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        """Serve, remembering the loop so the signal handler can reach it safely."""
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does, then tell the supervisor this worker is ready."""
        await super().startup(sockets)
        if self._ready_fd is not None and self.started:
            with contextlib.suppress(OSError):
                os.write(self._ready_fd, b"1")
            os.close(self._ready_fd)
            self._ready_fd = None

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's tick; a worker whose supervisor died stops as on SIGTERM."""
        if (
            self._worker_of is not None
            and counter % 10 == 0
            and not self.should_exit
            and os.getppid() != self._worker_of
        ):
            self._on_stop()
            self.should_exit = True
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's signal capture; a worker does not re-raise the stop signal at the end
        (its supervisor sent it and expects a clean exit)."""
        with super().capture_signals():
            yield
            if self._worker_of is not None:
                self._captured_signals.clear()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Stop taking jobs, then shut down as uvicorn does."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_stop)
        super().handle_exit(sig, frame)
