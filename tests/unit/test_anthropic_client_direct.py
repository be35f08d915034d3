"""The Anthropic client's direct call into its pooled transport: the same request httpx's
client would send, in wire form without httpx's client layer or its Request and Response
objects, with the same timeouts, decoding and errors."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ccgate.circuit import CircuitBreaker
from ccgate.runners.anthropic_client import MESSAGES_PATH, Answer, AnthropicClient
from ccgate.runners.anthropic_errors import passable_headers
from ccgate.runners.base import RunError
from ccgate.runners.upstream_transport import LeanResponse, LeanTransport

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
SSE = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
STREAMED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    + b"%x\r\n%s\r\n0\r\n\r\n" % (len(SSE), SSE)
)


def _answer(body: bytes, *headers: bytes, status: bytes = b"200 OK") -> bytes:
    """A whole HTTP/1.1 response with ``body`` and the extra header lines ``headers``."""
    lines = b"".join(h + b"\r\n" for h in headers)
    return b"HTTP/1.1 %s\r\n%scontent-length: %d\r\n\r\n%s" % (status, lines, len(body), body)


@contextlib.asynccontextmanager
async def recording(
    answer: bytes | None = OK, *, then: bytes | None = None
) -> AsyncIterator[tuple[list[bytes], int]]:
    """A server that records each request's head and body and answers ``answer`` (or never);
    with ``then``, it writes ``answer`` and stalls, and writes ``then`` once the client hangs
    up or the test ends."""
    seen: list[bytes] = []
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                seen.append(head + await reader.readexactly(length))
                if answer is None:
                    await reader.read()  # never answer; wait for the client to hang up
                    return
                writer.write(answer)
                if then is not None:
                    await reader.read()
                    return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        try:
            yield seen, server.sockets[0].getsockname()[1]
        finally:
            for writer in writers:
                writer.close()
            await asyncio.sleep(0.05)  # let the handlers see their connections close


def _client(port: int, **options: Any) -> AnthropicClient:
    return AnthropicClient(
        api_key="sk-test",
        base_url=f"http://127.0.0.1:{port}",
        breaker=CircuitBreaker(100, 1),
        **options,
    )


async def _post(
    client: AnthropicClient, *, stream: bool, headers: dict[str, str] | None = None
) -> Answer:
    headers = headers if headers is not None else {"anthropic-beta": "b1", "x-other": "dropped"}
    response = await client.post(MESSAGES_PATH, {"model": "m", "é": 1}, headers, stream=stream)
    await response.aread()
    await response.aclose()
    return response


async def test_client_direct_call_sends_the_request_httpx_would_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The direct call and httpx's client put the same bytes on the wire, streamed or not,
    with or without the client's anthropic headers."""
    flavours = [
        {"anthropic-beta": "b1", "x-other": "dropped"},
        {"Anthropic-Version": "2023-01-01"},
        {},
    ]
    async with recording() as (seen, port):
        client = _client(port)
        for headers in flavours:
            for stream in (False, True):
                await _post(client, stream=stream, headers=headers)
        monkeypatch.setattr(client, "_lean", None)  # the path through httpx's client
        for headers in flavours:
            for stream in (False, True):
                await _post(client, stream=stream, headers=headers)
        await client.aclose()
    assert len(seen) == 12
    assert seen[:6] == seen[6:]
    assert b"anthropic-beta: b1\r\n" in seen[0] and b"x-other" not in seen[0]
    assert b"anthropic-version: 2023-01-01\r\n" in seen[2]


async def test_client_direct_call_builds_no_httpx_request_or_response(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no proxy mounted, send, open_stream and count_tokens reach the pool without httpx's
    client layer and without building an httpx Request or Response."""

    def refuse(*_: object, **__: object) -> Any:
        raise AssertionError("httpx's client or its models were used")

    async with recording(OK) as (plain, port), recording(STREAMED) as (streamed, stream_port):
        client, stream_client = _client(port), _client(stream_port)
        with monkeypatch.context() as patched:
            patched.setattr(httpx.AsyncClient, "send", refuse)
            patched.setattr(httpx.Request, "__init__", refuse)
            patched.setattr(httpx.Response, "__init__", refuse)
            reply = await client.send({"model": "m"}, {})
            counted = await client.count_tokens({"model": "m"}, {})
            async with await stream_client.open_stream({"model": "m", "stream": True}, {}) as s:
                raw = b"".join([chunk async for chunk in s])
        await client.aclose()
        await stream_client.aclose()
    assert (reply.status, reply.json, reply.headers) == (
        200,
        {},
        {"content-type": "application/json"},
    )
    assert counted == {}
    assert raw == SSE and s.completed and s.headers == {"content-type": "text/event-stream"}
    assert len(plain) == 2 and len(streamed) == 1


async def test_client_direct_call_keeps_the_read_timeout() -> None:
    """An upstream that never answers is the client's timeout error on the direct path too."""
    async with recording(answer=None) as (_, port):
        client = _client(port, timeout_secs=0.2)
        with pytest.raises(RunError) as caught:
            await _post(client, stream=False)
        await client.aclose()
    assert caught.value.error_type == "timeout"


async def test_client_goes_through_the_proxy_of_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP_PROXY routes upstream calls through the proxy (httpx's client and its proxy
    transport), as it did before the pooled transport."""
    async with recording() as (seen, port):
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        client = _client(1)  # nothing listens on port 1: only the proxy can answer
        response = await _post(client, stream=False)
        await client.aclose()
    assert response.status_code == 200
    assert seen[0].startswith(b"POST http://127.0.0.1:1/v1/messages HTTP/1.1\r\n")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_client_decodes_compressed_answers(encoding: str) -> None:
    """A gzip or deflate answer reaches the caller decoded, a 2xx message and an error's
    message alike."""
    message = json.dumps({"type": "message", "model": "m", "usage": {"output_tokens": 3}})
    problem = json.dumps({"type": "error", "error": {"type": "x", "message": "too long"}})
    pack = gzip.compress if encoding == "gzip" else zlib.compress
    header = b"content-encoding: " + encoding.encode()
    ok = _answer(pack(message.encode()), b"content-type: application/json", header)
    bad = _answer(pack(problem.encode()), header, status=b"400 Bad Request")
    async with recording(ok) as (_, port), recording(bad) as (_, bad_port):
        client, refusing = _client(port), _client(bad_port)
        reply = await client.send({"model": "m"}, {})
        with pytest.raises(RunError) as refused:
            await refusing.send({"model": "m"}, {})
        await client.aclose()
        await refusing.aclose()
    assert reply.body == message.encode() and reply.usage == {"output_tokens": 3}
    assert refused.value.error_type == "upstream_bad_request"
    assert refused.value.message == "too long"


async def test_client_reads_a_body_larger_than_the_read_buffer() -> None:
    """A 3 MiB answer (more than the connection buffers before pausing) arrives whole."""
    message = json.dumps({"type": "message", "content": "x" * (3 * 1024 * 1024)}).encode()
    async with recording(_answer(message, b"content-type: application/json")) as (_, port):
        client = _client(port)
        reply = await client.send({"model": "m"}, {})
        await client.aclose()
    assert reply.body == message


async def test_client_half_read_answer_closes_its_connection() -> None:
    """An answer that stalls mid-body is the client's timeout, and its connection is closed,
    not pooled: the slot frees and the next call opens a new connection."""
    partial = b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"type"'
    async with recording(partial, then=b"") as (seen, port):
        client = _client(port, timeout_secs=0.5, max_connections=1)
        try:
            with pytest.raises(RunError) as caught:
                await client.send({"model": "m"}, {})
            pool = client._lean
            assert isinstance(pool, LeanTransport)
            assert not any(pool._idle.values()) and not pool._slots.locked()
            call = asyncio.create_task(client.send({"model": "m"}, {}))
            while len(seen) < 2:  # the second request is upstream; its answer stalls
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            call.cancel()  # a caller that goes away mid-body
            with pytest.raises(asyncio.CancelledError):
                await call
            assert not any(pool._idle.values()) and not pool._slots.locked()
        finally:
            await client.aclose()
    assert caught.value.error_type == "timeout"


async def test_client_passes_the_headers_httpx_would_pass() -> None:
    """The headers passed on from an answer read off the pool are those httpx's headers give:
    lower-cased names, repeated ones joined, odd bytes decoded alike."""
    samples = [
        [
            b"Content-Type: application/json",
            b"Request-Id: req_1",
            b"anthropic-ratelimit-tokens-remaining: 10",
            b"Anthropic-RateLimit-Tokens-Remaining: 9",
            b"x-other: dropped",
            b"retry-after: 3",
        ],
        [b"request-id: r\xc3\xa9q", b"x-other: v"],
        [b"request-id: req", b"x-other: \xe9"],
    ]
    for lines in samples:
        async with recording(_answer(b"{}", *lines)) as (_, port):
            client = _client(port)
            answer = await client.post(MESSAGES_PATH, {}, {}, stream=False)
            await answer.aclose()
            await client.aclose()
        assert isinstance(answer, LeanResponse)
        expected = passable_headers(httpx.Headers(answer.raw_headers))
        assert client.passable_headers(answer) == expected
        assert expected.get("request-id") is not None
