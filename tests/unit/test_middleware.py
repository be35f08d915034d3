"""The request middleware on its own: client addresses, response headers, the access line."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from starlette.types import Message, Receive, Scope, Send

from ccgate.api.middleware import RequestContextMiddleware
from ccgate.logs import configure_logging
from ccgate.security.netrules import ClientAddressRules


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Put structlog back as it was after each test."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


class Inner:
    """An app that notes each request's client address and answers 200 (with the rate
    headers of ``rate``, as the limiter would have set them)."""

    def __init__(self, rate: dict[str, str] | None = None) -> None:
        self.rate = rate
        self.clients: list[str | None] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.clients.append(scope["ccgate.client_ip"])
        if self.rate is not None:
            scope["ccgate.rate_headers"] = self.rate
        headers = [(b"content-type", b"text/plain"), (b"retry-after", b"7")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


async def _call(
    app: RequestContextMiddleware, peer: str, forwarded: str | None = None
) -> tuple[int, list[tuple[bytes, bytes]]]:
    headers = [(b"host", b"ccgate.test")]
    if forwarded is not None:
        headers.append((b"x-forwarded-for", forwarded.encode()))
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/health",
        "query_string": b"",
        "headers": headers,
        "client": (peer, 5555),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], sent[0]["headers"]


async def test_middleware_forwarded_for_is_weighed_on_every_request() -> None:
    """A trusted proxy's requests name the forwarded client each time, and the proxy itself
    when it forwards nothing, in any order."""
    inner = Inner()
    app = RequestContextMiddleware(
        inner, max_body_bytes=100, rules=ClientAddressRules(trusted_proxies=["10.0.0.1"])
    )
    for forwarded in (None, "192.168.1.7", None, "203.0.113.5", "192.168.1.7, 10.0.0.1", None):
        await _call(app, "10.0.0.1", forwarded)
    assert inner.clients == [
        "10.0.0.1",
        "192.168.1.7",
        "10.0.0.1",
        "203.0.113.5",
        "192.168.1.7",
        "10.0.0.1",
    ]


async def test_middleware_allowlist_verdicts_hold_across_many_peers() -> None:
    """With CCGATE_ALLOW_CIDRS set, each of thousands of peers gets its own verdict, the
    first time and again later."""
    inner = Inner()
    app = RequestContextMiddleware(
        inner, max_body_bytes=100, rules=ClientAddressRules(allow=["10.1.0.0/16"])
    )
    peers = [f"10.{1 + n % 2}.{n // 250 % 250}.{n % 250}" for n in range(2500)]
    statuses = [(await _call(app, peer))[0] for peer in peers + peers[:50]]
    expected = [200 if peer.startswith("10.1.") else 403 for peer in peers + peers[:50]]
    assert statuses == expected
    assert inner.clients == [peer for peer in peers + peers[:50] if peer.startswith("10.1.")]


async def test_middleware_adds_request_ids_and_rate_headers_once() -> None:
    """Every answer gets request-id and x-request-id; rate headers are added unless the
    answer already has that header."""
    app = RequestContextMiddleware(
        Inner(rate={"retry-after": "9", "x-ratelimit-limit-requests": "60"}), max_body_bytes=100
    )
    _, headers = await _call(app, "127.0.0.1")
    names = [name for name, _ in headers]
    request_id = dict(headers)[b"request-id"]
    assert names == [
        b"content-type",
        b"retry-after",
        b"request-id",
        b"x-request-id",
        b"x-ratelimit-limit-requests",
    ]
    assert dict(headers)[b"retry-after"] == b"7"
    assert dict(headers)[b"x-request-id"] == request_id
    assert re.fullmatch(rb"req_[0-9a-f]{32}", request_id)

    _, plain = await _call(RequestContextMiddleware(Inner(), max_body_bytes=100), "127.0.0.1")
    assert [name for name, _ in plain][2:] == [b"request-id", b"x-request-id"]


async def test_middleware_access_line_with_tracing_off() -> None:
    """The access line names the request's id, method, path, status, key and client, in
    that order, and no trace id while tracing is off."""
    out = io.StringIO()
    configure_logging("info", "json", out)
    app = RequestContextMiddleware(Inner(), max_body_bytes=100)
    _, headers = await _call(app, "127.0.0.1")

    [line] = [json.loads(text) for text in out.getvalue().splitlines()]
    assert list(line) == [
        "request_id",
        "method",
        "path",
        "status",
        "duration_ms",
        "key",
        "client",
        "event",
        "level",
        "timestamp",
    ]
    fields: dict[str, Any] = {k: line[k] for k in ("request_id", "method", "path", "status")}
    assert fields == {
        "request_id": dict(headers)[b"request-id"].decode(),
        "method": "GET",
        "path": "/health",
        "status": 200,
    }
