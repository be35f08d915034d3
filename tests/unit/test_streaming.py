"""Streamed answers (ccgate/api/streaming.py): what goes on the wire, a client that goes away,
and the clean-up that runs once however the stream ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.types import Message
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from ccgate.api.streaming import ClosingStreamingResponse, shielded
from ccgate.http_protocol import CoalescingCycle, HeldWrites, coalesce
from tests.support.recording_transport import RecordingTransport, uvicorn_cycle


def _cycle(transport: RecordingTransport) -> CoalescingCycle:
    """uvicorn's request/response cycle as ccgate serves it, its request body already read."""
    scope: Any = {"type": "http", "method": "POST", "path": "/", "http_version": "1.1"}
    cycle = uvicorn_cycle(transport, scope)
    cycle.more_body = False
    coalesce(cycle, HeldWrites(transport))  # type: ignore[arg-type]
    assert isinstance(cycle, CoalescingCycle)
    return cycle


async def _serve(response: ClosingStreamingResponse, cycle: RequestResponseCycle) -> None:
    """Send ``response`` through uvicorn's cycle, as uvicorn calls an app."""
    app: Any = response
    await app(cycle.scope, cycle.receive, cycle.send)


def _hang_up(cycle: RequestResponseCycle) -> None:
    """What uvicorn does when the client's connection closes."""
    cycle.disconnected = True
    cycle.message_event.set()


class _Closes:
    """An ``on_close`` that counts its calls."""

    def __init__(self, wait: float = 0.0) -> None:
        self.calls = 0
        self.finished = 0
        self.wait = wait

    async def __call__(self) -> None:
        self.calls += 1
        if self.wait:
            await asyncio.sleep(self.wait)
        self.finished += 1


async def test_stream_sends_its_head_with_the_first_frame_then_each_frame_at_once() -> None:
    """The head (SSE headers) and the first frame share one write; each later frame is sent
    as it comes; the clean-up runs once at the end."""
    transport = RecordingTransport()
    cycle = _cycle(transport)
    closes = _Closes()
    second = asyncio.Event()

    async def frames() -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        await second.wait()
        yield b"data: two\n\n"

    sending = asyncio.create_task(
        _serve(ClosingStreamingResponse(frames(), on_close=closes), cycle)
    )
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    for header in (
        b"content-type: text/event-stream; charset=utf-8",
        b"cache-control: no-cache",
        b"x-accel-buffering: no",
    ):
        assert header in head.split(b"\r\n")
    assert body == b"b\r\ndata: one\n\n\r\n"
    second.set()
    await asyncio.wait_for(sending, 5)
    assert transport.writes[1:] == [b"b\r\ndata: two\n\n\r\n", b"0\r\n\r\n"]
    assert closes.calls == 1


async def test_stream_of_ready_frames_is_one_write_with_its_head() -> None:
    """Frames all known up front (a list) leave with the head in a single write."""
    transport = RecordingTransport()
    cycle = _cycle(transport)
    response = ClosingStreamingResponse([b"data: a\n\n", "data: b\n\n"], headers={"X-A": "1"})
    await _serve(response, cycle)
    [write] = transport.writes
    head, _, body = write.partition(b"\r\n\r\n")
    assert b"x-a: 1" in head.split(b"\r\n")
    assert body == b"12\r\ndata: a\n\ndata: b\n\n\r\n0\r\n\r\n"


async def test_stream_client_gone_while_waiting_for_a_frame_ends_at_once() -> None:
    """A client that hangs up while the body waits (an idle upstream) stops the body there:
    its own clean-up runs, ``on_close`` runs once, and the request's task is not left
    cancelled."""
    transport = RecordingTransport()
    cycle = _cycle(transport)
    closes = _Closes()
    seen: list[str] = []

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield b"data: one\n\n"
            await asyncio.Event().wait()  # nothing more will come
            yield b"data: never\n\n"
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        finally:
            seen.append("closed")

    async def serve() -> int:
        await _serve(ClosingStreamingResponse(frames(), on_close=closes), cycle)
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    sending = asyncio.create_task(serve())
    for _ in range(5):
        await asyncio.sleep(0)
    _hang_up(cycle)
    assert await asyncio.wait_for(sending, 5) == 0
    assert seen == ["cancelled", "closed"]
    assert closes.calls == 1
    assert b"never" not in b"".join(transport.writes)


async def test_stream_client_gone_between_frames_sends_no_more() -> None:
    """A disconnect noticed while a frame was being sent stops the stream before the next
    frame; the body is closed, not left suspended."""
    sent: list[bytes] = []
    gone = asyncio.Event()
    closed: list[bool] = []

    async def receive() -> Message:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            sent.append(message["body"])
            gone.set()
            await asyncio.sleep(0)  # the watcher hears of it meanwhile

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield b"one"
            yield b"two"
        finally:
            closed.append(True)

    closes = _Closes()
    await asyncio.wait_for(
        ClosingStreamingResponse(frames(), on_close=closes)({"type": "http"}, receive, send), 5
    )
    assert sent == [b"one"]
    assert closed == [True] and closes.calls == 1


async def test_stream_client_gone_before_it_starts_still_runs_the_clean_up() -> None:
    """A client already gone when the answer starts: the body stops at its first wait and
    ``on_close`` runs once."""

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        return None

    async def frames() -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b"never"

    closes = _Closes()
    await asyncio.wait_for(
        ClosingStreamingResponse(frames(), on_close=closes)({"type": "http"}, receive, send), 5
    )
    assert closes.calls == 1


async def test_stream_cancelled_from_outside_raises_and_its_clean_up_still_finishes() -> None:
    """A cancellation from outside (not the client going away) is raised, and ``on_close``
    runs once and to its end even though the cancellation came first."""
    transport = RecordingTransport()
    cycle = _cycle(transport)
    closes = _Closes(wait=0.05)

    async def frames() -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        await asyncio.Event().wait()
        yield b"data: never\n\n"

    sending = asyncio.create_task(
        _serve(ClosingStreamingResponse(frames(), on_close=closes), cycle)
    )
    for _ in range(5):
        await asyncio.sleep(0)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    assert closes.calls == 1
    for _ in range(100):
        if closes.finished:
            break
        await asyncio.sleep(0.01)
    assert closes.finished == 1


async def test_stream_body_error_is_raised_after_the_clean_up() -> None:
    """An error raised by the body propagates (the server ends the response) after
    ``on_close`` ran once."""
    transport = RecordingTransport()
    cycle = _cycle(transport)
    closes = _Closes()

    async def frames() -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        raise RuntimeError("broken")

    with pytest.raises(RuntimeError, match="broken"):
        await _serve(ClosingStreamingResponse(frames(), on_close=closes), cycle)
    assert closes.calls == 1


async def test_stream_body_that_swallows_the_cancellation_still_stops() -> None:
    """A body that catches the cancellation and offers another frame is stopped anyway,
    with the request's task not left cancelled."""
    transport = RecordingTransport()
    cycle = _cycle(transport)

    async def frames() -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        yield b"data: after\n\n"
        await asyncio.Event().wait()

    async def serve() -> int:
        await _serve(ClosingStreamingResponse(frames()), cycle)
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    sending = asyncio.create_task(serve())
    for _ in range(5):
        await asyncio.sleep(0)
    _hang_up(cycle)
    assert await asyncio.wait_for(sending, 5) == 0
    assert b"after" not in b"".join(transport.writes)


async def test_shielded_clean_up_outlives_its_cancelled_caller_and_raises_its_error() -> None:
    """``shielded`` runs the clean-up to its end even when its caller is cancelled, and
    passes a clean-up's error on to a caller still waiting."""
    done: list[bool] = []

    async def slow() -> None:
        await asyncio.sleep(0.05)
        done.append(True)

    caller = asyncio.create_task(shielded(slow()))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0.1)
    assert done == [True]

    async def failing() -> None:
        await asyncio.sleep(0)
        raise ValueError("clean-up failed")

    with pytest.raises(ValueError, match="clean-up failed"):
        await shielded(failing())
