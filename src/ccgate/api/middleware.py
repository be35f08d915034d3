"""Per-request plumbing as plain ASGI: request ids, the body limit, access log and audit rows."""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ccgate import metrics, tracing
from ccgate.api.deps import services_in
from ccgate.api.errors import door_of_request, error_response
from ccgate.clock import utcnow
from ccgate.doors import SHARED_PREFIXES, door_of
from ccgate.errors import ApiError
from ccgate.logs import HotLogger
from ccgate.security.netrules import ClientAddressRules, IPAddress
from ccgate.store import AuditEntry
from ccgate.turns import Usage

log = HotLogger("ccgate.http")
# Peers whose client address and allowlist verdict are known, at most this many at a time.
_PEERS_KEPT = 1024

AUDITED_PREFIXES = ("/api/", "/v1/", "/run", "/files")
_NOT_AUDITED = ("/api/v1/health",)
# The route an audit row names when no route matched: the raw path is the client's to choose.
UNMATCHED_ROUTE = "(unmatched)"


class BodyTooLarge(ApiError):
    """The request body passed CCGATE_MAX_BODY_BYTES while being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            "request_too_large", f"request body exceeds {limit} bytes (CCGATE_MAX_BODY_BYTES)"
        )


@dataclass(slots=True)
class AuditFacts:
    """What a request's audit row says beyond the request itself; filled in as it is learnt.

    A typed object (not a dict splatted into the row), so a misspelt fact is a type error."""

    job_id: str | None = None
    model: str | None = None
    job_status: str | None = None
    prompt_bytes: int | None = None
    response_bytes: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    error_type: str | None = None
    prompt_text: str | None = None

    def add_usage(self, usage: Usage | None, cost_usd: float | None) -> None:
        """The tokens and cost the turn used (None when it reported none)."""
        self.input_tokens = usage.input_tokens if usage is not None else None
        self.output_tokens = usage.output_tokens if usage is not None else None
        self.cost_usd = cost_usd


def audit_facts(request: Request) -> AuditFacts:
    """The facts this request's audit row will carry; add to them as they become known."""
    facts = request.scope.get("ccgate.audit")
    if not isinstance(facts, AuditFacts):
        facts = request.scope["ccgate.audit"] = AuditFacts()
    return facts


def route_template(scope: Scope) -> str:
    """The matched route's template (``/api/v1/jobs/{job_id}``), never the raw path."""
    template = getattr(scope.get("route"), "path_format", None)
    return template if isinstance(template, str) else UNMATCHED_ROUTE


class RequestContextMiddleware:
    """Gives each request an id, caps its body, and logs and audits it when it ends."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        rules: ClientAddressRules | None = None,
        backend: str = "cli",
    ) -> None:
        self.app = app
        self.backend = backend
        self.max_body_bytes = max_body_bytes
        self.rules = rules or ClientAddressRules()
        # A peer without X-Forwarded-For always gets the same address and verdict.
        self._peers: dict[str, tuple[IPAddress | None, str | None, bool]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The request id is the trace id (random hex while tracing is off), so a client's
        # request id finds its trace and its log lines.
        span, trace_id = tracing.start_request(scope["method"])
        request_id = "req_" + trace_id
        scope["ccgate.request_id"] = request_id
        if span is None:
            await self._handle(scope, receive, send, request_id)
            return
        scope["ccgate.trace_id"] = trace_id
        try:
            with tracing.current(span):
                await self._handle(scope, receive, send, request_id)
        finally:
            tracing.end_request(
                span,
                scope["method"],
                route_template(scope),
                scope.get("ccgate.status", 500),
                request_id,
            )

    async def _handle(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        started = time.monotonic()
        scope["ccgate.timing"] = metrics.begin_request(metrics.door_label(scope["path"]))
        status = 500
        limit = self.max_body_bytes
        address, client_ip, allowed = self._client(scope)
        scope["ccgate.client_address"] = address
        scope["ccgate.client_ip"] = client_ip

        if not allowed:
            await _send_error(
                scope,
                receive,
                send,
                request_id,
                ApiError("forbidden", "this address may not call ccgate (CCGATE_ALLOW_CIDRS)"),
            )
            self._log(scope, request_id, 403, started)
            return

        if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
            # PostgreSQL refuses NUL in text, so an id or filter holding one never reaches SQL.
            await _send_error(
                scope,
                receive,
                send,
                request_id,
                ApiError("invalid_request", "the URL must not contain a NUL character (%00)"),
            )
            self._log(scope, request_id, 400, started)
            return

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_error(scope, receive, send, request_id, BodyTooLarge(limit))
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
                rid = request_id.encode()
                headers = [
                    *message.get("headers", ()),
                    (b"request-id", rid),
                    (b"x-request-id", rid),
                ]
                # Rate-limit headers of an admitted request, on success and failure alike.
                rate_headers = scope.get("ccgate.rate_headers")
                if rate_headers:
                    present = {name.lower() for name, _ in headers}
                    for name, value in rate_headers.items():
                        if name.encode() not in present:
                            headers.append((name.encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, capped_receive, send_with_id)
        finally:
            self._log(scope, request_id, status, started)
            self._audit(scope, request_id, status, started)

    def _client(self, scope: Scope) -> tuple[IPAddress | None, str | None, bool]:
        """The client's address, as text, and whether it may call at all."""
        peer_pair = scope.get("client")
        peer = peer_pair[0] if peer_pair else None
        forwarded = [
            v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-forwarded-for"
        ]
        if forwarded or peer is None:
            return self._judge(peer, forwarded)
        known = self._peers.get(peer)
        if known is None:
            if len(self._peers) >= _PEERS_KEPT:
                self._peers.clear()
            known = self._peers[peer] = self._judge(peer, forwarded)
        return known

    def _judge(
        self, peer: str | None, forwarded: list[str]
    ) -> tuple[IPAddress | None, str | None, bool]:
        address = self.rules.client_address(peer, forwarded)
        client_ip = str(address) if address is not None else None
        return address, client_ip, self.rules.allowed(address)

    def _log(self, scope: Scope, request_id: str, status: int, started: float) -> None:
        scope["ccgate.status"] = status
        timing: metrics.RequestTiming | None = scope.get("ccgate.timing")
        metrics.request_observer(timing.door if timing else metrics.OTHER, self.backend).observe(
            status, scope.get("ccgate.error_type"), time.monotonic() - started, timing
        )
        fields = {
            "request_id": request_id,
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "duration_ms": round((time.monotonic() - started) * 1000, 2),
            "key": scope.get("ccgate.key_name"),
            "client": scope.get("ccgate.client_ip"),
        }
        if "ccgate.trace_id" in scope:
            fields["trace_id"] = scope["ccgate.trace_id"]
        log.info("request", fields)

    def _audit(self, scope: Scope, request_id: str, status: int, started: float) -> None:
        path: str = scope["path"]
        if not path.startswith(AUDITED_PREFIXES) or path in _NOT_AUDITED:
            return
        audit = services_in(scope).audit
        # Only a path both SDKs call needs the headers to name its door.
        headers = _headers(scope) if path.startswith(SHARED_PREFIXES) else None
        facts = scope.get("ccgate.audit")
        if not isinstance(facts, AuditFacts):
            facts = AuditFacts()
        audit.record(
            AuditEntry(
                at=utcnow(),
                request_id=request_id,
                door=door_of(path, headers).name,
                route=route_template(scope),
                http_status=status,
                duration_ms=int((time.monotonic() - started) * 1000),
                key_name=scope.get("ccgate.key_name"),
                client_ip=scope.get("ccgate.client_ip"),
                job_id=facts.job_id,
                model=facts.model,
                job_status=facts.job_status,
                prompt_bytes=facts.prompt_bytes,
                response_bytes=facts.response_bytes,
                input_tokens=facts.input_tokens,
                output_tokens=facts.output_tokens,
                cost_usd=facts.cost_usd,
                error_type=facts.error_type,
                prompt_text=facts.prompt_text,
            )
        )


_EXPOSED_HEADERS = [
    "request-id",
    "x-request-id",
    "retry-after",
    "location",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
]


def add_cors(app: Starlette, origins: tuple[str, ...]) -> None:
    """Answer browsers from ``origins``; ``*`` allows any origin but never with credentials,
    so no arbitrary origin is ever reflected together with Allow-Credentials."""
    wildcard = "*" in origins
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"] if wildcard else list(origins),
        allow_credentials=not wildcard,
        allow_methods=["GET", "POST", "PATCH", "DELETE"],
        allow_headers=["*"],
        expose_headers=_EXPOSED_HEADERS,
        max_age=600,
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def _send_error(
    scope: Scope, receive: Receive, send: Send, request_id: str, error: ApiError
) -> None:
    scope["ccgate.error_type"] = error.error_type
    response = error_response(request_id, error, door_of_request(scope["path"], _headers(scope)))
    response.headers["request-id"] = request_id
    response.headers["connection"] = "close"
    await response(scope, receive, send)
