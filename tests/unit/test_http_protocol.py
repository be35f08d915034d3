"""ccgate's uvicorn protocol: headers held until the first body message, then one write."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from ccgate.http_protocol import CoalescingCycle, HeldWrites, coalesce
from tests.support.recording_transport import RecordingTransport, uvicorn_cycle


def _cycle(transport: RecordingTransport, method: str = "GET") -> CoalescingCycle:
    scope: Any = {"type": "http", "method": method, "path": "/", "http_version": "1.1"}
    cycle = uvicorn_cycle(transport, scope)
    coalesce(cycle, HeldWrites(transport))  # type: ignore[arg-type]
    assert isinstance(cycle, CoalescingCycle)
    return cycle


def _start(*headers: tuple[bytes, bytes]) -> Any:
    return {"type": "http.response.start", "status": 200, "headers": list(headers)}


def _body(body: bytes, more: bool = False) -> Any:
    return {"type": "http.response.body", "body": body, "more_body": more}


def test_uvicorn_internals_the_protocol_relies_on_still_exist() -> None:
    """uvicorn still has the methods and attributes ccgate.http_protocol overrides or sets."""
    assert callable(getattr(HttpToolsProtocol, "_start_asgi_task", None))
    assert list(inspect.signature(HttpToolsProtocol._start_asgi_task).parameters) == [
        "self",
        "cycle",
        "app",
    ]
    assert inspect.iscoroutinefunction(RequestResponseCycle.send)
    init = inspect.signature(RequestResponseCycle.__init__).parameters
    assert {"transport", "flow", "keep_alive", "on_response"} <= set(init)
    assert not hasattr(RequestResponseCycle, "__slots__")
    cycle = _cycle(RecordingTransport())
    assert cycle.response_started is False and cycle.disconnected is False
    assert cycle.scope["method"] == "GET"


async def test_cycle_sends_headers_and_body_in_one_write() -> None:
    """A Content-Length answer leaves as one transport write."""
    transport = RecordingTransport()
    cycle = _cycle(transport)
    await cycle.send(_start((b"content-length", b"2")))
    assert transport.writes == []
    await cycle.send(_body(b"ok"))
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\nok")


async def test_cycle_streams_headers_with_the_first_chunk_then_each_chunk_at_once() -> None:
    """A chunked stream writes headers with its first chunk, then every chunk as it is sent."""
    transport = RecordingTransport()
    cycle = _cycle(transport)
    await cycle.send(_start((b"content-type", b"text/event-stream")))
    await cycle.send(_body(b"event one", more=True))
    assert len(transport.writes) == 1
    assert transport.writes[0].endswith(b"\r\n\r\n9\r\nevent one\r\n")
    await cycle.send(_body(b"two", more=True))
    assert transport.writes[1] == b"3\r\ntwo\r\n"
    # Later chunks go straight to the socket's transport.
    assert cycle.transport is transport  # type: ignore[comparison-overlap]


@pytest.mark.parametrize("method", ["HEAD", "GET"])
async def test_cycle_flushes_headers_at_a_body_message_that_writes_nothing(method: str) -> None:
    """A HEAD answer, or an empty first chunk, has sent its headers by that message."""
    transport = RecordingTransport()
    cycle = _cycle(transport, method)
    await cycle.send(_start((b"content-type", b"text/plain")))
    await cycle.send(_body(b"", more=True))
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")


async def test_held_writes_close_sends_held_headers_first() -> None:
    """A connection closed after the start (an app error) still sends the headers, then closes."""
    transport = RecordingTransport()
    cycle = _cycle(transport)
    await cycle.send(_start((b"content-length", b"10")))
    cycle.transport.close()
    assert len(transport.writes) == 1 and transport.closed


async def test_cycle_refused_start_does_not_hold_a_later_write() -> None:
    """A start that raises before writing leaves the next write (e.g. a 500) unheld."""
    transport = RecordingTransport()
    cycle = _cycle(transport)
    with pytest.raises(RuntimeError):
        await cycle.send(_start((b"bad name", b"x")))
    cycle.transport.write(b"raw")
    assert transport.writes == [b"raw"]
