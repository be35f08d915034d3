"""A lean pooled HTTP/1.1 transport for the Anthropic client: httpx's API, not httpcore's pool.

httpcore's pool walks every pooled connection several times per request (polling idle sockets),
so its CPU per request grows with the pool: at 50 concurrent calls it cost more than the rest
of the gateway together (docs/benchmarks.md). This transport keeps what the API backend needs
and nothing more: a LIFO stack of idle keep-alive connections per origin, a semaphore for
``max_connections`` (httpx's ``PoolTimeout`` when none frees up in time), each connection an
asyncio protocol feeding httptools' C parser, the request head and body in one write.

Kept from httpx: TLS with SNI and the same trust store (``httpx.create_ssl_context``), the
connect/read/write/pool timeouts of the request, httpx's exception classes (so the client's
error mapping and the breaker see the same failures), decoding, and proxies (the client
leaves a proxied upstream to httpx's own transport). A cancelled or half-read exchange closes
its connection instead of returning it to the pool.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import httptools
import httpx

# Servers drop idle keep-alive connections after a few seconds; httpx's default expiry.
_KEEPALIVE_EXPIRY_SECS = 5.0
_READ_HIGH_WATER = 1024 * 1024  # buffered response bytes before reading pauses
_DEFAULT_PORTS = {b"http": 80, b"https": 443}

Origin = tuple[bytes, bytes, int]


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: writes a request, parses its response as it arrives."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.reused = False
        self.closed = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.received = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        """Feed the parser; wake the reader."""
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response from upstream: {exc}"))
            return
        if self._buffered > _READ_HIGH_WATER and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        """The server closed its side: the response ends here (or is cut short)."""
        if not self.complete:
            self._fail(httpx.RemoteProtocolError("the server closed the connection mid-response"))
        self.closed = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is gone."""
        self.closed = True
        if not self.complete:
            error = httpx.ReadError(str(exc)) if exc is not None else None
            self._fail(error or httpx.RemoteProtocolError("the server closed the connection"))
        self._wake()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        """One response header."""
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        """The head is in."""
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        """A piece of the body."""
        self._chunks.append(body)
        self._buffered += len(body)

    def on_message_complete(self) -> None:
        """The whole response is in."""
        self.complete = True

    # -- used by the transport -------------------------------------------------------------

    def send(self, head: bytes, body: bytes) -> None:
        """Write a request (head and body in one write)."""
        self._reset()
        assert self.transport is not None
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)

    async def wait(self, timeout: float | None) -> None:
        """Wait until more of the response (or an error) arrives; ReadTimeout after
        ``timeout`` seconds of silence."""
        if self._error is not None:
            raise self._error
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise httpx.ReadTimeout("upstream sent nothing in time") from None
        finally:
            self._waiter = None
        if self._error is not None and not self._chunks:
            raise self._error

    def take(self) -> bytes | None:
        """The body bytes received so far (None: nothing yet)."""
        if not self._chunks:
            return None
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def close(self) -> None:
        """Close the socket."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Body(httpx.AsyncByteStream):
    """A response body read off its connection; the connection goes back to the pool when
    the body was read to its end, and is closed otherwise."""

    def __init__(self, pool: LeanTransport, connection: _Connection, read_timeout: float | None):
        self._pool = pool
        self._connection = connection
        self._timeout = read_timeout
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        try:
            while True:
                data = connection.take()
                if data:
                    yield data
                elif connection.complete:
                    break
                else:
                    await connection.wait(self._timeout)
        except httpx.TransportError:
            raise
        except OSError as exc:
            raise httpx.ReadError(str(exc)) from None
        await self.aclose()

    async def aclose(self) -> None:
        """Release the connection (to the pool only when its exchange is over)."""
        if self._done:
            return
        self._done = True
        self._pool.release(self._connection)


class LeanTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive pool of at most ``max_connections`` connections (see module doc)."""

    def __init__(self, *, max_connections: int, ssl_context: ssl.SSLContext | None = None):
        self._max = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[Origin, list[_Connection]] = {}
        self._ssl = ssl_context
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on a pooled connection; the response body streams off it."""
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        origin = (scheme, url.raw_host, url.port or _DEFAULT_PORTS[scheme])
        body = await request.aread()
        head = self._head(request, body)
        await self._acquire(timeouts.get("pool"))
        try:
            connection = await self._exchange(origin, head, body, timeouts)
        except BaseException:
            self._slots.release()
            raise
        headers = connection.raw_headers
        return httpx.Response(
            connection.status,
            headers=headers,
            stream=_Body(self, connection, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": b""},
        )

    async def _exchange(
        self, origin: Origin, head: bytes, body: bytes, timeouts: dict[str, Any]
    ) -> _Connection:
        """Write the request and wait for the response head; a reused connection the server
        had already closed (nothing received) is retried once on a fresh one."""
        for attempt in range(2):
            connection = self._pooled(origin) if attempt == 0 else None
            if connection is None:
                connection = await self._connect(origin, timeouts.get("connect"))
            try:
                connection.send(head, body)
                while not connection.headers_done:
                    await connection.wait(timeouts.get("read"))
            except httpx.TransportError:
                connection.close()
                if connection.reused and not connection.received and attempt == 0:
                    continue
                raise
            except BaseException:
                connection.close()  # cancelled mid-exchange: the connection's state is unknown
                raise
            return connection
        raise AssertionError("unreachable")

    def _head(self, request: httpx.Request, body: bytes) -> bytes:
        target = request.url.raw_path
        lines = [request.method.encode(), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            lower = name.lower()
            if lower == b"transfer-encoding" or (lower == b"content-length"):
                continue
            lines += [name, b": ", value, b"\r\n"]
        lines += [b"content-length: ", str(len(body)).encode(), b"\r\n\r\n"]
        return b"".join(lines)

    async def _acquire(self, timeout: float | None) -> None:
        if not self._slots.locked():
            await self._slots.acquire()
            return
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("every upstream connection stayed busy") from None

    def _pooled(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.closed or now - connection.idle_since > _KEEPALIVE_EXPIRY_SECS:
                connection.close()
                continue
            connection.reused = True
            return connection
        return None

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context = None
        if scheme == b"https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()  # httpx's trust store and env, as before
                self._ssl.set_alpn_protocols(["http/1.1"])  # as httpcore offers it
            context = self._ssl
        name = host.decode("ascii")
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(origin),
                    name,
                    port,
                    ssl=context,
                    server_hostname=name if context is not None else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {name} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from None
        return connection

    def release(self, connection: _Connection) -> None:
        """A response is done with: pool its connection if it can carry another exchange."""
        self._slots.release()
        if self._closed or connection.closed or not (connection.complete and connection.keep_alive):
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle = self._idle.setdefault(connection.origin, [])
        idle.append(connection)
        if len(idle) > self._max:
            idle.pop(0).close()

    async def aclose(self) -> None:
        """Close every idle connection; busy ones close as their responses finish."""
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
