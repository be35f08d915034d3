"""The API backend's pooled HTTP/1.1 transport against a tiny in-process server."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from ccgate.runners.upstream_transport import LeanTransport, Target

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class Upstream:
    """Counts connections and requests; ``answer`` writes each response."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                await self.answer(reader, writer)
                if writer.is_closing():
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()


async def _ok(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(OK)


@contextlib.asynccontextmanager
async def serving(
    answer: Answer = _ok, context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[Upstream, int]]:
    upstream = Upstream(answer)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0, ssl=context)
    async with server:
        try:
            yield upstream, server.sockets[0].getsockname()[1]
        finally:
            for writer in upstream.writers:
                writer.close()
            await asyncio.sleep(0.05)  # let the handlers see their connections close


def _client(port: int, scheme: str = "http", **kwargs: object) -> httpx.AsyncClient:
    transport = LeanTransport(max_connections=2, **kwargs)  # type: ignore[arg-type]
    return httpx.AsyncClient(
        base_url=f"{scheme}://localhost:{port}", transport=transport, timeout=2
    )


async def test_transport_reuses_one_connection_for_sequential_requests() -> None:
    """Three requests in turn travel over one keep-alive connection, body and headers intact."""
    async with serving() as (upstream, port), _client(port) as client:
        for _ in range(3):
            response = await client.post("/v1/messages", content=b'{"a":1}')
            assert response.status_code == 200 and response.json() == {}
    assert upstream.connections == 1
    assert upstream.requests[0].startswith(b"POST /v1/messages HTTP/1.1\r\n")
    assert upstream.requests[0].endswith(b'content-length: 7\r\n\r\n{"a":1}')


async def test_transport_replaces_a_connection_the_server_closed() -> None:
    """A pooled connection the server closed after its answer is not reused: a new one is."""

    async def close_after(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()
        writer.close()

    async with serving(close_after) as (upstream, port), _client(port) as client:
        for _ in range(2):
            assert (await client.post("/x", content=b"{}")).status_code == 200
            await asyncio.sleep(0.05)
    assert upstream.connections == 2


async def test_transport_retries_once_when_a_reused_connection_is_dead() -> None:
    """A reused connection that yields nothing (closed under it) is retried on a fresh one."""
    async with serving() as (upstream, port), _client(port) as client:
        assert (await client.post("/x", content=b"{}")).status_code == 200
        transport = client._transport
        assert isinstance(transport, LeanTransport)
        (idle,) = next(iter(transport._idle.values()))
        idle.closed = False  # as if the close had not been noticed yet
        assert idle.transport is not None
        idle.transport.abort()
        idle.closed = False
        assert (await client.post("/x", content=b"{}")).status_code == 200
    assert upstream.connections == 2


async def test_transport_cancelled_exchange_closes_its_connection() -> None:
    """A caller cancelled while waiting for the answer does not put the connection back."""

    async def never(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()

    async with serving(never) as (_, port), _client(port) as client:
        call = asyncio.create_task(client.post("/x", content=b"{}"))
        await asyncio.sleep(0.1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        transport = client._transport
        assert isinstance(transport, LeanTransport)
        assert not any(transport._idle.values())
        assert not transport._slots.locked()


async def test_transport_read_timeout_is_httpx_read_timeout() -> None:
    """Silence past the read timeout raises httpx.ReadTimeout, as httpcore's would."""

    async def never(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()

    async with serving(never) as (_, port), _client(port) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/x", content=b"{}", timeout=httpx.Timeout(2, read=0.1))


async def test_transport_pool_timeout_when_every_connection_is_busy() -> None:
    """With max_connections busy, a further call waits the pool timeout, then PoolTimeout."""

    async def never(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()

    async with serving(never) as (_, port), _client(port) as client:
        busy = [asyncio.create_task(client.post("/x", content=b"{}")) for _ in range(2)]
        await asyncio.sleep(0.1)
        with pytest.raises(httpx.PoolTimeout):
            await client.post("/x", content=b"{}", timeout=httpx.Timeout(2, pool=0.1))
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)


async def test_transport_streams_a_chunked_body_as_it_arrives() -> None:
    """A chunked (SSE) answer streams piece by piece and the connection is pooled after it."""
    gate = asyncio.Event()

    async def chunked(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await gate.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")

    async with serving(chunked) as (upstream, port), _client(port) as client:
        async with client.stream("POST", "/x", content=b"{}") as response:
            chunks = response.aiter_bytes()
            assert await anext(chunks) == b"first"
            gate.set()
            assert b"".join([c async for c in chunks]) == b"second"
        gate.clear()
        gate.set()
        assert (await client.post("/x", content=b"{}")).status_code == 200
    assert upstream.connections == 1


async def test_transport_cut_off_answer_is_a_transport_error() -> None:
    """A server that closes mid-body gives an httpx.TransportError, never a short body."""

    async def cut(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    async with serving(cut) as (_, port), _client(port) as client:
        with pytest.raises(httpx.TransportError):
            await client.post("/x", content=b"{}")


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost`` and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_transport_speaks_tls_with_sni_and_verifies_the_certificate(
    certificate: tuple[Path, Path],
) -> None:
    """HTTPS: the server sees the host name by SNI; the certificate is checked against the CA."""
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    names: list[str | None] = []

    def sni(_: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
        names.append(name)

    server_context.sni_callback = sni
    trusting = ssl.create_default_context(cafile=str(cert))
    async with serving(context=server_context) as (_, port):
        async with _client(port, "https", ssl_context=trusting) as client:
            assert (await client.post("/x", content=b"{}")).status_code == 200
        async with _client(port, "https", ssl_context=ssl.create_default_context()) as client:
            with pytest.raises(httpx.ConnectError):
                await client.post("/x", content=b"{}")
    assert names[0] == "localhost"


def _target(port: int, path: str = "/v1/messages") -> Target:
    return Target("POST", httpx.URL(f"http://127.0.0.1:{port}{path}"))


def _head(port: int, body: bytes) -> bytes:
    return b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:%d\r\ncontent-length: %d\r\n\r\n" % (
        port,
        len(body),
    )


TIMEOUTS = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}


async def test_exchange_streams_a_chunked_body_and_pools_the_connection() -> None:
    """A request in wire form gets status, raw headers and a body that streams piece by piece;
    the connection carries the next exchange once the body was read."""
    gate = asyncio.Event()

    async def chunked(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nRequest-Id: r1\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"5\r\nfirst\r\n")
        await writer.drain()
        await gate.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")

    pool = LeanTransport(max_connections=1)
    async with serving(chunked) as (upstream, port):
        answer = await pool.exchange(_target(port), _head(port, b"{}"), b"{}", TIMEOUTS)
        assert (answer.status_code, answer.is_success) == (200, True)
        assert answer.raw_headers[0] == (b"Request-Id", b"r1")
        chunks = answer.aiter_bytes()
        assert await anext(chunks) == b"first"
        gate.set()
        assert b"".join([c async for c in chunks]) == b"second"
        await answer.aclose()
        with pytest.raises(httpx.StreamError):  # its connection already carries the next one
            await answer.aread()
        again = await pool.exchange(_target(port), _head(port, b"{}"), b"{}", TIMEOUTS)
        assert await again.aread() == b"firstsecond"
        await pool.aclose()
    assert upstream.connections == 1
    assert upstream.requests[0] == _head(port, b"{}") + b"{}"


async def test_exchange_errors_are_httpx_errors_naming_the_request() -> None:
    """A refused connection and a body cut short raise httpx's errors with the request's URL
    attached, as httpx's client does."""

    async def cut(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    pool = LeanTransport(max_connections=1)
    async with serving(cut) as (_, port):
        answer = await pool.exchange(_target(port), _head(port, b"{}"), b"{}", TIMEOUTS)
        with pytest.raises(httpx.TransportError) as cut_short:
            await answer.aread()
    with pytest.raises(httpx.ConnectError) as refused:
        await pool.exchange(_target(port), _head(port, b"{}"), b"{}", TIMEOUTS)
    await pool.aclose()
    assert not pool._slots.locked()
    for caught in (cut_short, refused):
        assert caught.value.request.url == f"http://127.0.0.1:{port}/v1/messages"


@pytest.mark.parametrize("charset", ["", "; charset=latin-1", "; charset=nonsense"])
async def test_exchange_lines_split_as_httpx_splits_them(charset: str) -> None:
    """aiter_lines gives the lines httpx.Response.aiter_lines gives, whatever the chunking
    (a CRLF or a UTF-8 character cut across chunks, odd line breaks) and the charset."""
    text = "data: a\r\n\r\ndata: é\u2028x\rdata: b\n\ndata: c\r\nend".encode()
    pieces = [text[:8], text[8:10], text[10:17], text[17:], b""]  # b"": the last chunk
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream%s\r\n" % charset.encode()

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(head + b"transfer-encoding: chunked\r\n\r\n")
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)

    pool = LeanTransport(max_connections=1)
    async with serving(answer) as (_, port):
        lean = await pool.exchange(_target(port), _head(port, b"{}"), b"{}", TIMEOUTS)
        lines = [line async for line in lean.aiter_lines()]
        await lean.aclose()
        async with httpx.AsyncClient(transport=pool) as client:
            expected = [line async for line in (await client.post(_url(port))).aiter_lines()]
    assert lines == expected
    assert len(lines) >= 5


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1/messages"
