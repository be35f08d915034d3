"""A streamed answer that stops when its client goes away and always runs its clean-up.

``ClosingStreamingResponse`` is plain ASGI: the head, then one body message per frame the
body yields, then the end. Starlette's StreamingResponse (ASGI spec < 2.4, as uvicorn
declares) runs every stream in an anyio task group, a second task listening for the
disconnect; here the body runs in the request's own task and one small asyncio task waits on
``receive`` for the disconnect. When the client goes away while the body waits for its next
frame, the request's task is cancelled there (the cancellation is taken back once the body
stopped, as ``asyncio.timeout`` does), so an idle stream waiting on upstream ends at once; a
disconnect noticed between frames stops the stream before the next one.

Whatever ended it (the last frame, the client gone, an error, a cancellation from outside),
``on_close`` then runs once, shielded from a cancellation: the doors' clean-up (cancel the
job, close the upstream stream, free the key's concurrency slot) never depends on the body's
own ``finally``, which does not run for a body that never started. A body given as a list of
ready frames leaves as one body message with the head, with no watcher: nothing in it waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.types import Receive, Scope, Send

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# Clean-ups still running after their caller was cancelled (a task needs a strong reference).
_running: set[asyncio.Task[None]] = set()


async def shielded(clean_up: Awaitable[None]) -> None:
    """``await asyncio.shield(clean_up)``, one event-loop turn shorter: ``clean_up`` runs in a
    task of its own that cancelling the caller does not stop, and hands its outcome to the
    caller as it ends (``asyncio.shield`` passes it on through two done callbacks)."""
    loop = asyncio.get_running_loop()
    outcome = loop.create_future()
    task = loop.create_task(_run_into(clean_up, outcome))
    _running.add(task)
    await outcome


async def _run_into(clean_up: Awaitable[None], outcome: asyncio.Future[None]) -> None:
    try:
        await clean_up
    except asyncio.CancelledError:
        outcome.cancel()  # the task itself was cancelled (the loop is closing)
    except BaseException as exc:
        if not outcome.done():  # else the caller was cancelled and is gone (shield drops it)
            outcome.set_exception(exc)
        if not isinstance(exc, Exception):
            raise
    else:
        if not outcome.done():
            outcome.set_result(None)
    finally:
        _running.discard(asyncio.current_task())


def _end() -> dict[str, Any]:
    return {"type": "http.response.body", "body": b"", "more_body": False}


class _Watch:
    """The disconnect watcher of one stream: cancels the stream's task when the client goes
    away while the body waits for a frame."""

    __slots__ = ("cancelled", "error", "gone", "task", "waiting")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.waiting = False
        self.gone = False
        self.cancelled = False
        self.error: Exception | None = None

    async def run(self, receive: Receive) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception as exc:  # the stream stops and raises it, as if it read it itself
            self.error = exc
        self.gone = True
        if self.waiting:
            self.cancelled = True
            self.task.cancel()


class ClosingStreamingResponse(StreamingResponse):
    """A streamed response (SSE unless told otherwise) that awaits ``on_close`` once it is
    done, however it ended."""

    def __init__(
        self,
        content: AsyncIterable[bytes | str] | Iterable[bytes | str],
        on_close: Callable[[], Awaitable[None]] | None = None,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = "text/event-stream",
        background: BackgroundTask | None = None,
        *,
        sse: bool = True,
    ) -> None:
        # StreamingResponse's own set-up, except that ready frames are not read in a thread.
        self.ready: list[bytes | str] | None = None
        if isinstance(content, AsyncIterable):
            self.body_iterator = content
        else:
            self.ready = list(content)
            self.body_iterator = _ready(self.ready)
        self._ready_body = self.body_iterator
        self.status_code = status_code
        self.media_type = media_type
        self.background = background
        self.init_headers(headers)
        if sse:
            self.headers.update(SSE_HEADERS)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the stream, then run the clean-up, shielded from the cancellation."""
        try:
            if self.ready is not None and self.body_iterator is self._ready_body:
                await self._send_ready(send, self.ready)
            else:
                await self._send_stream(receive, send)
        finally:
            if self.on_close is not None:
                await shielded(self.on_close())
        if self.background is not None:
            await self.background()

    def _start(self) -> dict[str, Any]:
        return {
            "type": "http.response.start",
            "status": self.status_code,
            "headers": self.raw_headers,
        }

    async def _send_ready(self, send: Send, frames: list[bytes | str]) -> None:
        # Nothing to wait for: the frames leave as one body message, the last.
        body = b"".join(self._bytes(frame) for frame in frames)
        await send(self._start())
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _send_stream(self, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch(task)
        watcher = asyncio.get_running_loop().create_task(watch.run(receive))
        cancelling = task.cancelling()
        frames = self.body_iterator.__aiter__()
        next_frame = frames.__anext__
        ended = False
        try:
            await send(self._start())
            while not watch.gone:
                watch.waiting = True
                try:
                    frame = await next_frame()
                except StopAsyncIteration:
                    ended = True
                    break
                finally:
                    watch.waiting = False
                if frame.__class__ is not bytes:
                    frame = self._bytes(frame)
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            if ended:
                await send(_end())
        except asyncio.CancelledError:
            if not watch.cancelled:
                raise
            watch.cancelled = False
            if task.uncancel() > cancelling:  # cancelled from outside as well
                raise
        finally:
            watcher.cancel()
            if watch.cancelled:  # the body swallowed the cancellation; take it back anyway
                task.uncancel()
            if not ended:
                closing = getattr(frames, "aclose", None)
                if closing is not None:
                    await closing()
        if watch.error is not None:
            raise watch.error

    def _bytes(self, frame: bytes | str | memoryview) -> bytes | memoryview:
        if isinstance(frame, bytes | memoryview):
            return frame
        return frame.encode(self.charset)


async def _ready(frames: Iterable[bytes | str]) -> AsyncIterator[bytes | str]:
    for frame in frames:
        yield frame
