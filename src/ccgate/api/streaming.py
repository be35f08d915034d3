"""A streaming response that always runs its clean-up, even when it never started.

Starlette stops a StreamingResponse whose client went away; if that happens before the body's
generator first ran, the generator's own ``finally`` never runs. The doors' clean-up (cancel
the job, close the upstream stream, free the key's concurrency slot) must not depend on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClosingStreamingResponse(StreamingResponse):
    """An SSE response that awaits ``on_close`` once it is done, however it ended."""

    def __init__(
        self, content: AsyncIterable[bytes], on_close: Callable[[], Awaitable[None]], **kwargs: Any
    ) -> None:
        kwargs.setdefault("media_type", "text/event-stream")
        super().__init__(content, **kwargs)
        self.headers.update(SSE_HEADERS)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the stream, then run the clean-up, shielded from the cancellation."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            await asyncio.shield(self.on_close())
