"""Per-request plumbing as plain ASGI: request ids, the body limit, access log and audit rows."""

from __future__ import annotations

import secrets
import time
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ccgate.api.errors import door_of_request, error_response
from ccgate.audit import AuditLog
from ccgate.clock import utcnow
from ccgate.errors import ApiError
from ccgate.store import AuditEntry

log = structlog.get_logger("ccgate.http")

AUDITED_PREFIXES = ("/api/", "/v1/")


class BodyTooLarge(ApiError):
    """The request body passed CCGATE_MAX_BODY_BYTES while being read."""

    def __init__(self, limit: int) -> None:
        super().__init__("request_too_large", f"request body exceeds {limit} bytes "
                         "(CCGATE_MAX_BODY_BYTES)")


def door_of(path: str) -> str:
    """Which door a path belongs to, as recorded in audit rows."""
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1/chat"):
        return "openai"
    return "native"


class RequestContextMiddleware:
    """Gives each request an id, caps its body, and logs and audits it when it ends."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(12)
        scope["ccgate.request_id"] = request_id
        started = time.monotonic()
        status = 500
        limit = self.max_body_bytes

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_too_large(scope, receive, send, request_id, limit)
            status = 413
            self._log(scope, request_id, status, started)
            return

        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"request-id", request_id.encode()))
                headers.append((b"x-request-id", request_id.encode()))
                # Rate-limit headers of an admitted request, on success and failure alike.
                present = {name.lower() for name, _ in headers}
                for name, value in scope.get("ccgate.rate_headers", {}).items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, capped_receive, send_with_id)
        finally:
            self._log(scope, request_id, status, started)
            self._audit(scope, request_id, status, started)

    def _log(self, scope: Scope, request_id: str, status: int, started: float) -> None:
        client = scope.get("client")
        log.info("request", request_id=request_id, method=scope["method"], path=scope["path"],
                 status=status, duration_ms=round((time.monotonic() - started) * 1000, 2),
                 key=scope.get("ccgate.key_name"), client=client[0] if client else None)

    def _audit(self, scope: Scope, request_id: str, status: int, started: float) -> None:
        path: str = scope["path"]
        if not path.startswith(AUDITED_PREFIXES):
            return
        app = scope.get("app")
        audit: AuditLog | None = getattr(getattr(app, "state", None), "audit", None)
        if audit is None:
            return
        facts: dict[str, Any] = scope.get("ccgate.audit", {})
        client = scope.get("client")
        audit.record(AuditEntry(
            at=utcnow(), request_id=request_id, door=door_of(path), route=path,
            http_status=status, duration_ms=int((time.monotonic() - started) * 1000),
            key_name=scope.get("ccgate.key_name"), client_ip=client[0] if client else None,
            **facts))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_too_large(scope: Scope, receive: Receive, send: Send, request_id: str,
                          limit: int) -> None:
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
    response = error_response(request_id, BodyTooLarge(limit),
                              door_of_request(scope["path"], headers))
    response.headers["request-id"] = request_id
    response.headers["connection"] = "close"
    await response(scope, receive, send)
