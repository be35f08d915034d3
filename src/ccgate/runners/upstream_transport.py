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

Besides httpx's ``handle_async_request``, ``exchange`` takes a request already in wire form
(its head built by the caller) and answers a ``LeanResponse``: status, raw headers and a body
read straight off the connection, without httpx's Request and Response objects (their header
merging, URL handling and decoder layers were a tenth of the API backend's CPU per call). An
answer with a Content-Encoding is read through an httpx.Response, so it decodes as before.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httptools
import httpx
from httpx._decoders import LineDecoder  # httpx's own line splitting, for identical lines

# Servers drop idle keep-alive connections after a few seconds; httpx's default expiry.
_KEEPALIVE_EXPIRY_SECS = 5.0
_READ_HIGH_WATER = 1024 * 1024  # buffered response bytes before reading pauses
_DEFAULT_PORTS = {b"http": 80, b"https": 443}

Origin = tuple[bytes, bytes, int]
# httpx.Timeout.as_dict(): connect, read, write and pool, in seconds (None: no limit).
Timeouts = Mapping[str, float | None]
_CONTENT_ENCODING = b"content-encoding"


class Target:
    """Where one kind of request goes (method and URL), resolved once for many requests."""

    __slots__ = ("method", "origin", "url")

    def __init__(self, method: str, url: httpx.URL) -> None:
        self.method = method
        self.url = url
        scheme = url.raw_scheme
        port = _DEFAULT_PORTS.get(scheme)
        # An unsupported scheme fails when a request is sent, as httpx's transports do.
        self.origin: Origin | None = (
            (scheme, url.raw_host, url.port or port) if port is not None else None
        )

    def request(self) -> httpx.Request:
        """An httpx.Request naming this target, for an error raised about a request to it."""
        return httpx.Request(self.method, self.url)


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
        self.encoded = False  # a Content-Encoding header came: the body needs decoding
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
        if len(name) == len(_CONTENT_ENCODING) and name.lower() == _CONTENT_ENCODING:
            self.encoded = True

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


class LeanResponse:
    """An answer off a pooled connection: status, raw headers, and the body read straight
    from the connection (decoded through an httpx.Response when it has a Content-Encoding).

    The parts of httpx.Response's API the client uses (``status_code``, ``is_success``,
    ``headers``, ``aread``, ``aiter_bytes``, ``aiter_lines``, ``aclose``), with the same
    results and errors. The connection goes back to the pool once the body was read to its
    end; ``aclose`` before that closes it.
    """

    __slots__ = (
        "_connection",
        "_content",
        "_done",
        "_full",
        "_headers",
        "_pool",
        "_target",
        "_timeout",
        "raw_headers",
        "status_code",
    )

    def __init__(
        self,
        pool: LeanTransport,
        connection: _Connection,
        target: Target,
        read_timeout: float | None,
    ) -> None:
        self.status_code = connection.status
        self.raw_headers = connection.raw_headers
        self._pool = pool
        self._connection = connection
        self._target = target
        self._timeout = read_timeout
        self._done = False
        self._content: bytes | None = None
        self._headers: httpx.Headers | None = None
        self._full: httpx.Response | None = None
        if connection.encoded:
            self._full = self._as_httpx()

    @property
    def is_success(self) -> bool:
        """A 2xx status."""
        return 200 <= self.status_code < 300

    @property
    def headers(self) -> httpx.Headers:
        """The headers as httpx.Headers (built on first use: error paths only)."""
        if self._headers is None:
            self._headers = httpx.Headers(self.raw_headers)
        return self._headers

    def as_httpx(self) -> httpx.Response:
        """This answer as an unread httpx.Response over the same body (before any read)."""
        if self._full is None:
            if self._done or self._content is not None:
                raise RuntimeError("the answer's body was already read or closed")
            self._full = self._as_httpx()
        return self._full

    def _as_httpx(self) -> httpx.Response:
        self._done = True  # the httpx.Response's stream releases the connection from now on
        response = httpx.Response(
            self.status_code,
            headers=self.raw_headers,
            stream=_Body(self._pool, self._connection, self._timeout),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": b""},
            request=self._target.request(),
        )
        self._headers = response.headers
        return response

    async def aread(self) -> bytes:
        """The whole body."""
        if self._full is not None:
            return await self._full.aread()
        if self._content is not None:
            return self._content
        if self._done:
            raise httpx.StreamClosed()
        connection = self._connection
        parts: list[bytes] = []
        try:
            while True:
                data = connection.take()
                if data:
                    parts.append(data)
                if connection.complete:
                    break
                await connection.wait(self._timeout)
        except BaseException as exc:
            self._failed(exc)
            raise
        self._release()
        self._content = parts[0] if len(parts) == 1 else b"".join(parts)
        return self._content

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive."""
        if self._full is not None:
            async for chunk in self._full.aiter_bytes():
                yield chunk
            return
        if self._content is not None:
            if self._content:
                yield self._content
            return
        if self._done:
            raise httpx.StreamClosed()
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
        except BaseException as exc:
            self._failed(exc)  # cancelled, cut off or abandoned half-read: closed, not pooled
            raise
        self._release()

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body's text lines, split as httpx.Response.aiter_lines splits them."""
        if self._full is not None:
            async for line in self._full.aiter_lines():
                yield line
            return
        decoder = codecs.getincrementaldecoder(self._text_encoding())(errors="replace")
        lines = LineDecoder()
        async for chunk in self.aiter_bytes():
            text = decoder.decode(chunk)
            if text:
                for line in lines.decode(text):
                    yield line
        text = decoder.decode(b"", True)
        if text:
            for line in lines.decode(text):
                yield line
        for line in lines.flush():
            yield line

    async def aclose(self) -> None:
        """Release the connection (to the pool only when the body was read to its end)."""
        if self._full is not None:
            await self._full.aclose()
        else:
            self._release()

    def _release(self) -> None:
        if not self._done:
            self._done = True
            self._pool.release(self._connection)

    def _failed(self, exc: BaseException) -> None:
        """A read that raised ``exc``: close the connection; raise an OSError as httpx's
        ReadError, and name the request in an httpx error, as httpx.Response does."""
        self._release()
        if isinstance(exc, OSError):
            error = httpx.ReadError(str(exc))
            error.request = self._target.request()
            raise error from None
        if isinstance(exc, httpx.RequestError):
            exc.request = self._target.request()

    def _text_encoding(self) -> str:
        """The body's text encoding as httpx.Response.encoding finds it (utf-8 by default)."""
        for name, value in self.raw_headers:
            if b"charset" in value.lower() and name.lower() == b"content-type":
                # A charset given: httpx's own parsing and fallbacks decide.
                encoding = httpx.Response(self.status_code, headers=self.raw_headers).encoding
                return encoding or "utf-8"
        return "utf-8"


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

    async def exchange(
        self, target: Target, head: bytes, body: bytes, timeouts: Timeouts
    ) -> LeanResponse:
        """Send a request in wire form to ``target`` on a pooled connection: ``head`` is the
        request line and every header (Content-Length included) up to the blank line, built
        by the caller. The answer's body is left on the connection, unread."""
        origin = target.origin
        try:
            if origin is None:
                scheme = target.url.raw_scheme
                raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
            await self._acquire(timeouts.get("pool"))
            try:
                connection = await self._exchange(origin, head, body, timeouts)
            except BaseException:
                self._slots.release()
                raise
        except httpx.RequestError as exc:
            exc.request = target.request()  # as httpx's client attaches it
            raise
        return LeanResponse(self, connection, target, timeouts.get("read"))

    async def _exchange(
        self, origin: Origin, head: bytes, body: bytes, timeouts: Timeouts
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
