"""The Anthropic API client: the operator's key, one keep-alive pool, a circuit breaker.

``AnthropicClient`` is the API backend's pass-through client (``send``, ``open_stream``,
``count_tokens``) and the transport under the API runner. Every call goes through the
breaker. It hears "success" as soon as upstream answers 2xx (headers, not the end of the
stream, so a half-open probe does not hold the gate for a whole generation); a stream that
then breaks off, or an overloaded error event inside it, counts as a failure afterwards.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from ccgate import __version__
from ccgate.circuit import CircuitBreaker, CircuitOpen
from ccgate.runners.anthropic_errors import (
    error_detail,
    error_for,
    passable_headers,
    read_error_body,
    retry_after_from,
)
from ccgate.runners.anthropic_sse import UpstreamStream, merge_usage
from ccgate.runners.base import RunError
from ccgate.runners.redaction import redact
from ccgate.runners.upstream_transport import LeanResponse, LeanTransport, Target

log = structlog.get_logger("ccgate.runner")

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
_CONNECT_TIMEOUT_SECS = 10.0
# When a wait ends and the RunError to raise if it does (the run's wall or idle limit).
Limit = Callable[[], tuple[float, RunError]]
# An unread upstream answer: off the pool directly, or through httpx's client (a proxy).
Answer = LeanResponse | httpx.Response
# The response headers passed on to clients (anthropic_errors.passable_headers' rule).
_PASSED_HEADERS = frozenset({b"content-type", b"request-id", b"retry-after"})
_RATELIMIT_PREFIX = b"anthropic-ratelimit-"


@dataclass(frozen=True)
class UpstreamReply:
    """A 2xx non-streaming answer from upstream, for the Anthropic door's pass-through."""

    status: int
    json: dict[str, Any]
    headers: dict[str, str]
    usage: dict[str, int]
    model: str | None
    stop_reason: str | None
    body: bytes = b""  # ``json`` as upstream sent it, passed on without re-encoding


class _NoCookies(http.cookiejar.CookieJar):
    """Keeps no cookies: one caller's upstream Set-Cookie must not ride on another's request
    (and parsing them costs every response a header scan)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        """Ignore the response's cookies."""

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        """Store nothing."""


class AnthropicClient:
    """Calls the Anthropic Messages API with the operator's key, through the breaker."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        breaker: CircuitBreaker,
        max_connections: int = 100,
        timeout_secs: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.breaker = breaker
        self.timeout_secs = timeout_secs
        self._api_key = api_key
        self._host = httpx.URL(base_url).host
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={"user-agent": f"ccgate/{__version__}"},
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            timeout=httpx.Timeout(timeout_secs, connect=min(_CONNECT_TIMEOUT_SECS, timeout_secs)),
            # Our own pool unless a test hands in a transport (upstream_transport.py: why) or
            # HTTPS_PROXY/HTTP_PROXY apply to upstream: httpx mounts its proxy transports only
            # when it builds its own, so then it does.
            transport=transport
            or (None if _proxied(base_url) else LeanTransport(max_connections=max_connections)),
            cookies=_NoCookies(),
        )
        # Absolute URLs built once, as httpx would join them onto base_url, which it otherwise
        # re-parses for every request.
        base = self._client.base_url
        self._urls = {
            path: base.copy_with(raw_path=base.raw_path + path.lstrip("/").encode())
            for path in (MESSAGES_PATH, COUNT_TOKENS_PATH)
        }
        # The transport httpx would pick for upstream. When it is our pool, a call goes to it
        # in wire form (httpx's client layers and its Request/Response objects cost ~0.1 ms a
        # call); anything else (a proxy httpx mounted from the environment, a test's
        # transport) keeps httpx's whole client in between.
        chosen = self._client._transport_for_url(base)  # same choice httpx makes
        self._lean = chosen if isinstance(chosen, LeanTransport) else None
        self._targets = {path: Target("POST", url) for path, url in self._urls.items()}
        # The head httpx would write: request line, Host, its default headers not overridden
        # (per set of our header names), ours, then content-length.
        self._request_lines = {
            path: b"POST %s HTTP/1.1\r\nHost: %s\r\n" % (url.raw_path, url.netloc)
            for path, url in self._urls.items()
        }
        self._defaults: dict[tuple[str, ...], bytes] = {}
        self._timeouts = self._client.timeout.as_dict()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def open_stream(
        self, body: dict[str, Any], client_headers: Mapping[str, str]
    ) -> UpstreamStream:
        """POST a streaming ``body`` and return the 2xx stream; raise RunError otherwise."""
        response = await self.post(MESSAGES_PATH, body, client_headers, stream=True)
        return UpstreamStream(self, response)

    async def send(self, body: dict[str, Any], client_headers: Mapping[str, str]) -> UpstreamReply:
        """POST a non-streaming ``body`` and return upstream's message; raise RunError."""
        response = await self.post(MESSAGES_PATH, body, client_headers, stream=False)
        message, raw = await self._read_json(response)
        usage: dict[str, int] = {}
        merge_usage(usage, message.get("usage"))
        model, stop_reason = message.get("model"), message.get("stop_reason")
        return UpstreamReply(
            status=response.status_code,
            json=message,
            headers=self.passable_headers(response),
            usage=usage,
            model=model if isinstance(model, str) else None,
            stop_reason=stop_reason if isinstance(stop_reason, str) else None,
            body=raw,
        )

    async def count_tokens(
        self, body: dict[str, Any], client_headers: Mapping[str, str]
    ) -> dict[str, Any]:
        """Forward ``body`` to ``/v1/messages/count_tokens`` and return upstream's answer."""
        response = await self.post(COUNT_TOKENS_PATH, body, client_headers, stream=False)
        return (await self._read_json(response))[0]

    async def post(
        self,
        path: str,
        body: dict[str, Any],
        client_headers: Mapping[str, str],
        *,
        stream: bool,
        limit: Limit | None = None,
    ) -> Answer:
        """POST ``body``; return the 2xx response unread, or settle the breaker and raise."""
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        headers = self._headers(client_headers, stream=stream)
        lean = self._lean
        if lean is not None:
            head = self._head(path, headers, len(content))
        else:
            request = self._client.build_request(
                "POST", self._urls[path], headers=headers, content=content
            )
        try:
            await self.breaker.admit()
        except CircuitOpen as exc:
            raise RunError(
                "circuit_open",
                "The upstream API failed repeatedly; the API backend pauses "
                f"calls to it for {exc.retry_after:.0f} s more.",
                retry_after=exc.retry_after,
            ) from None
        settled = False
        try:
            when, timeout_error = limit() if limit is not None else (None, None)
            try:
                async with asyncio.timeout_at(when):
                    if lean is not None:
                        answer: Answer = await lean.exchange(
                            self._targets[path], head, content, self._timeouts
                        )
                    else:
                        answer = await self._client.send(request, stream=True)
            except TimeoutError:
                if timeout_error is None:
                    raise
                raise timeout_error from None
            except httpx.TransportError as exc:
                # Our own pool being full says nothing about upstream: no verdict.
                settled = not isinstance(exc, httpx.PoolTimeout)
                raise self.transport_failure(exc) from None
            if answer.is_success:
                self.breaker.record_success()
                settled = True
                return answer
            response = answer if isinstance(answer, httpx.Response) else answer.as_httpx()
            raw = await read_error_body(response)
            error = self._status_error(response.status_code, response.headers, raw)
            if response.status_code >= 500:
                self._record_failure(error.retry_after)
                settled = True
            raise error
        finally:
            if not settled:
                # 4xx, 429, the run's own deadline or a cancelled caller: no verdict on upstream.
                self.breaker.release()

    def _head(self, path: str, headers: dict[str, str], length: int) -> bytes:
        """The request head httpx's client writes for ``headers`` and a body of ``length``
        bytes (same headers, order and spelling; a test compares the bytes)."""
        names = tuple(headers)
        defaults = self._defaults.get(names)
        if defaults is None:  # one per set of names: at most four
            defaults = self._defaults[names] = b"".join(
                b"%s: %s\r\n" % (name, value)
                for name, value in self._client.headers.raw
                if name.lower().decode("latin-1") not in headers
            )
        parts = [self._request_lines[path], defaults]
        for name, value in headers.items():
            parts += (name.encode("ascii"), b": ", value.encode("ascii"), b"\r\n")
        parts.append(b"content-length: %d\r\n\r\n" % length)
        return b"".join(parts)

    def passable_headers(self, response: Answer) -> dict[str, str]:
        """The response headers worth passing on to a client (``passable_headers``)."""
        if isinstance(response, httpx.Response):
            return passable_headers(response.headers)
        passed: dict[str, str] = {}
        for name, value in response.raw_headers:
            if not (name.isascii() and value.isascii()):
                # httpx picks one text encoding for all headers; let it.
                return passable_headers(response.headers)
            lower = name.lower()
            if lower in _PASSED_HEADERS or lower.startswith(_RATELIMIT_PREFIX):
                key, text = lower.decode("ascii"), value.decode("ascii")
                passed[key] = f"{passed[key]}, {text}" if key in passed else text
        return passed

    def _headers(self, client_headers: Mapping[str, str], *, stream: bool) -> dict[str, str]:
        """Upstream request headers: ours, plus the client's anthropic-version/-beta only."""
        version, beta = DEFAULT_ANTHROPIC_VERSION, None
        for name, value in client_headers.items():
            lower = name.lower()
            if lower == "anthropic-version" and value.strip():
                version = _forwardable(lower, value)
            elif lower == "anthropic-beta" and value.strip():
                beta = _forwardable(lower, value)
        headers = {
            "x-api-key": self._api_key,
            "anthropic-version": version,
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
        }
        if stream:
            # Compressed SSE would arrive in bursts and need re-framing; ask for it plain.
            headers["accept-encoding"] = "identity"
        if beta is not None:
            headers["anthropic-beta"] = beta
        return headers

    async def _read_json(self, response: Answer) -> tuple[dict[str, Any], bytes]:
        """The 2xx body as a JSON object, and as the bytes it came in."""
        try:
            raw = await response.aread()
        except httpx.TransportError as exc:
            raise self.transport_failure(exc) from None
        finally:
            await response.aclose()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise RunError(
                "upstream_error",
                "The upstream API answered 2xx with a body that is not a JSON object.",
                upstream_status=response.status_code,
            )
        return payload, raw

    # -- turning failures into RunErrors (and breaker verdicts) ----------------------------

    def _status_error(self, status: int, headers: httpx.Headers, raw: bytes) -> RunError:
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        upstream_type, message = error_detail(payload)
        message = self.redact(message) or f"HTTP {status}"
        log.warning(
            "upstream_error",
            status=status,
            upstream_type=upstream_type,
            upstream_request_id=headers.get("request-id"),
        )
        return error_for(status, message, retry_after_from(headers))

    def event_failure(self, error: RunError) -> RunError:
        """Settle the breaker for an error event inside a 2xx stream and return the error."""
        if (error.upstream_status or 0) >= 500:
            self._record_failure(error.retry_after)
        return error

    def broken_off(self) -> RunError:
        """Settle the breaker for a stream that ended before message_stop; the error."""
        self._record_failure(None)
        return RunError("upstream_error", "The upstream stream ended before message_stop.")

    def transport_failure(self, exc: httpx.TransportError) -> RunError:
        """Settle the breaker for a transport error and return the RunError clients see."""
        if isinstance(exc, httpx.PoolTimeout):
            return RunError(
                "timeout",
                "Every upstream connection stayed busy for "
                f"{self.timeout_secs:g} s (CCGATE_API_MAX_CONNECTIONS).",
            )
        self._record_failure(None)
        log.warning("upstream_unreachable", host=self._host, error=type(exc).__name__)
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return RunError(
                "upstream_overloaded", f"Could not connect to the upstream API at {self._host}."
            )
        if isinstance(exc, httpx.TimeoutException):
            return RunError(
                "timeout",
                f"The upstream API sent nothing for "
                f"{self.timeout_secs:g} s (CCGATE_UPSTREAM_TIMEOUT_SECS).",
            )
        return RunError(
            "upstream_error", f"The connection to the upstream API failed ({type(exc).__name__})."
        )

    def _record_failure(self, retry_after: float | None) -> None:
        was_open = self.breaker.state == "open"
        self.breaker.record_failure(retry_after)
        if not was_open and self.breaker.state == "open":
            log.warning("circuit_opened", **self.breaker.snapshot())

    def redact(self, text: str) -> str:
        """``text`` without keys, the operator's own included."""
        text = redact(text)
        return text.replace(self._api_key, "[redacted]") if self._api_key else text


def _proxied(base_url: str) -> bool:
    """Whether the environment's proxy settings (NO_PROXY included) route ``base_url``."""
    probe = httpx.AsyncClient()  # builds transports only; no connection is opened
    chosen = probe._transport_for_url(httpx.URL(base_url))  # httpx's own choice
    return chosen is not probe._transport


def _forwardable(name: str, value: str) -> str:
    if not (value.isascii() and value.isprintable()):
        raise RunError(
            "invalid_request", f"The {name} header holds characters that cannot be forwarded."
        )
    return value.strip()
