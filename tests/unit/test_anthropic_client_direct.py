"""The Anthropic client's direct call into its pooled transport: the same request httpx's
client would send, without httpx's client layer, with the same timeouts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ccgate.circuit import CircuitBreaker
from ccgate.runners.anthropic_client import MESSAGES_PATH, AnthropicClient
from ccgate.runners.base import RunError

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


@contextlib.asynccontextmanager
async def recording(answer: bytes | None = OK) -> AsyncIterator[tuple[list[bytes], int]]:
    """A server that records each request's head and body and answers ``answer`` (or never)."""
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


async def _post(client: AnthropicClient, *, stream: bool) -> httpx.Response:
    headers = {"anthropic-beta": "b1", "x-other": "dropped"}
    response = await client.post(MESSAGES_PATH, {"model": "m"}, headers, stream=stream)
    await response.aread()
    await response.aclose()
    return response


async def test_client_direct_call_sends_the_request_httpx_would_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The direct call and httpx's client put the same bytes on the wire, streamed or not."""
    async with recording() as (seen, port):
        client = _client(port)
        for stream in (False, True):
            await _post(client, stream=stream)
        monkeypatch.setattr(client, "_direct", None)  # the path through httpx's client
        for stream in (False, True):
            await _post(client, stream=stream)
        await client.aclose()
    assert seen[0] == seen[2] and seen[1] == seen[3]
    assert b"anthropic-beta: b1\r\n" in seen[0] and b"x-other" not in seen[0]


async def test_client_direct_call_skips_httpx_client_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no proxy mounted, a call reaches the pool without httpx's client layer."""

    async def refuse(*_: object, **__: object) -> httpx.Response:
        raise AssertionError("httpx.AsyncClient.send was called")

    monkeypatch.setattr(httpx.AsyncClient, "send", refuse)
    async with recording() as (seen, port):
        client = _client(port)
        response = await _post(client, stream=False)
        await client.aclose()
    assert response.status_code == 200 and response.request.url.path == MESSAGES_PATH
    assert len(seen) == 1


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
