"""The Anthropic API back end: the operator's key, one keep-alive pool, a circuit breaker.

``run()`` serves the native door like the CLI runner does; ``open_stream()``, ``send()`` and
``count_tokens()`` let the Anthropic-compatible door pass requests through almost untouched.
Every call goes through the breaker. It hears "success" as soon as upstream answers 2xx
(headers, not the end of the stream, so a half-open probe does not hold the gate for a whole
generation); a stream that then breaks off, or an overloaded error event inside it, counts
as a failure afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import structlog

from ccgate import __version__
from ccgate.circuit import CircuitBreaker, CircuitOpen
from ccgate.clock import utcnow
from ccgate.config import ConfigError, Settings
from ccgate.pricing import cost_usd
from ccgate.runners.base import RunError, RunEvent, RunRequest, RunResult, RunStarted, TextDelta
from ccgate.runners.cli import redact

log = structlog.get_logger("ccgate.runner")

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
_PASSED_HEADERS = frozenset({"content-type", "request-id", "retry-after"})
_RATELIMIT_PREFIX = "anthropic-ratelimit-"
_ERROR_BODY_LIMIT = 64 * 1024
_SCAN_TAIL_LIMIT = 1024 * 1024
_CONNECT_TIMEOUT_SECS = 10.0
_OVERLOADED_STATUSES = frozenset({500, 502, 503, 504, 529})
# What an in-stream error event stands for, so it maps like the same HTTP error would.
# When a wait ends and the RunError to raise if it does (the run's wall or idle limit).
Limit = Callable[[], tuple[float, RunError]]
_EVENT_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def message_body(request: RunRequest) -> dict[str, Any]:
    """The streaming Messages API body for ``request``: history, new turn, system, sampling."""
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": [*request.history, {"role": "user", "content": request.content}],
        "stream": True,
    }
    system = "\n\n".join(p for p in (request.system_prompt, request.append_system_prompt) if p)
    if system:
        body["system"] = system
    if request.stop_sequences:
        body["stop_sequences"] = list(request.stop_sequences)
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    return body


def passable_headers(headers: httpx.Headers) -> dict[str, str]:
    """The upstream response headers worth passing on to a client; nothing else."""
    return {
        name: value
        for name, value in headers.items()
        if name in _PASSED_HEADERS or name.startswith(_RATELIMIT_PREFIX)
    }


def retry_after_from(headers: httpx.Headers, now: datetime | None = None) -> float | None:
    """Seconds to wait: ``retry-after``, else the ``anthropic-ratelimit-*-reset`` times.

    Among reset times, the latest of the limits at ``remaining: 0`` (all must free up), else
    the earliest one.
    """
    now = now or utcnow()
    value = headers.get("retry-after", "").strip()
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, (parsedate_to_datetime(value) - now).total_seconds())
            except (TypeError, ValueError):
                pass
    resets: list[float] = []
    exhausted: list[float] = []
    for name, raw in headers.items():
        if not (name.startswith(_RATELIMIT_PREFIX) and name.endswith("-reset")):
            continue
        try:
            when = datetime.fromisoformat(raw.strip())
        except ValueError:
            continue
        if when.tzinfo is None:
            continue
        secs = max(0.0, (when - now).total_seconds())
        resets.append(secs)
        if headers.get(name.removesuffix("reset") + "remaining", "").strip() == "0":
            exhausted.append(secs)
    if exhausted:
        return max(exhausted)
    return min(resets) if resets else None


def _merge_usage(usage: dict[str, int], raw: object) -> None:
    if isinstance(raw, dict):
        for key, value in raw.items():
            if key.endswith("_tokens") and isinstance(value, int) and not isinstance(value, bool):
                usage[key] = value


def _error_detail(payload: object) -> tuple[str | None, str]:
    """(error type, message) from an Anthropic error envelope, tolerating anything else."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None, ""
    kind = error.get("type")
    return (kind if isinstance(kind, str) else None), str(error.get("message") or "")


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


class AnthropicApiRunner:
    """Runs requests against the Anthropic Messages API with the operator's key."""

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
            transport=transport,
            cookies=_NoCookies(),
        )
        # Absolute URLs built once, as httpx would join them onto base_url, which it otherwise
        # re-parses for every request.
        base = self._client.base_url
        self._urls = {
            path: base.copy_with(raw_path=base.raw_path + path.lstrip("/").encode())
            for path in (MESSAGES_PATH, COUNT_TOKENS_PATH)
        }

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def run(self, request: RunRequest) -> AsyncGenerator[RunEvent, None]:
        """Yield RunStarted, a TextDelta per text delta and the RunResult; raise RunError."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.timeout_secs
        idle = request.idle_timeout_secs

        def limit() -> tuple[float, RunError]:
            if idle > 0 and loop.time() + idle < deadline:
                return loop.time() + idle, RunError(
                    "timeout", f"idle timeout: the run produced no output for {idle:g} s"
                )
            return deadline, RunError(
                "timeout",
                f"wall-clock timeout: the run did not finish within {request.timeout_secs:g} s",
            )

        response = await self._open(
            MESSAGES_PATH, message_body(request), {}, stream=True, limit=limit
        )
        reader = _MessageReader(request.model, self._redact)
        try:
            lines = response.aiter_lines()
            while not reader.stopped:
                when, timeout_error = limit()
                try:
                    async with asyncio.timeout_at(when):
                        line = await anext(lines, None)
                except TimeoutError:
                    raise timeout_error from None
                except httpx.TransportError as exc:
                    raise self._transport_failure(exc) from None
                if line is None:
                    raise self._broken_off()
                if not line.startswith("data:"):
                    continue
                event = reader.feed(line[5:])
                if isinstance(event, RunError):
                    raise self._event_failure(event)
                if event is not None:
                    yield event
            # Read the body's end too, or the connection cannot go back to the pool.
            with contextlib.suppress(TimeoutError, httpx.HTTPError):
                async with asyncio.timeout_at(limit()[0]):
                    async for _ in lines:
                        pass
        finally:
            await response.aclose()
        yield reader.result(int((time.monotonic() - started) * 1000))

    async def open_stream(
        self, body: dict[str, Any], client_headers: Mapping[str, str]
    ) -> UpstreamStream:
        """POST a streaming ``body`` and return the 2xx stream; raise RunError otherwise."""
        response = await self._open(MESSAGES_PATH, body, client_headers, stream=True)
        return UpstreamStream(self, response)

    async def send(self, body: dict[str, Any], client_headers: Mapping[str, str]) -> UpstreamReply:
        """POST a non-streaming ``body`` and return upstream's message; raise RunError."""
        response = await self._open(MESSAGES_PATH, body, client_headers, stream=False)
        message, raw = await self._read_json(response)
        usage: dict[str, int] = {}
        _merge_usage(usage, message.get("usage"))
        model, stop_reason = message.get("model"), message.get("stop_reason")
        return UpstreamReply(
            status=response.status_code,
            json=message,
            headers=passable_headers(response.headers),
            usage=usage,
            model=model if isinstance(model, str) else None,
            stop_reason=stop_reason if isinstance(stop_reason, str) else None,
            body=raw,
        )

    async def count_tokens(
        self, body: dict[str, Any], client_headers: Mapping[str, str]
    ) -> dict[str, Any]:
        """Forward ``body`` to ``/v1/messages/count_tokens`` and return upstream's answer."""
        response = await self._open(COUNT_TOKENS_PATH, body, client_headers, stream=False)
        return (await self._read_json(response))[0]

    # -- one upstream call through the breaker ---------------------------------------------

    async def _open(
        self,
        path: str,
        body: dict[str, Any],
        client_headers: Mapping[str, str],
        *,
        stream: bool,
        limit: Limit | None = None,
    ) -> httpx.Response:
        """POST ``body``; return the 2xx response unread, or settle the breaker and raise."""
        request = self._client.build_request(
            "POST",
            self._urls[path],
            headers=self._headers(client_headers, stream=stream),
            content=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
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
                    response = await self._client.send(request, stream=True)
            except TimeoutError:
                if timeout_error is None:
                    raise
                raise timeout_error from None
            except httpx.TransportError as exc:
                # Our own pool being full says nothing about upstream: no verdict.
                settled = not isinstance(exc, httpx.PoolTimeout)
                raise self._transport_failure(exc) from None
            if response.is_success:
                self.breaker.record_success()
                settled = True
                return response
            raw = await _read_limited(response)
            error = self._status_error(response.status_code, response.headers, raw)
            if response.status_code >= 500:
                self._record_failure(error.retry_after)
                settled = True
            raise error
        finally:
            if not settled:
                # 4xx, 429, the run's own deadline or a cancelled caller: no verdict on upstream.
                self.breaker.release()

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

    async def _read_json(self, response: httpx.Response) -> tuple[dict[str, Any], bytes]:
        """The 2xx body as a JSON object, and as the bytes it came in."""
        try:
            raw = await response.aread()
        except httpx.TransportError as exc:
            raise self._transport_failure(exc) from None
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

    # -- turning failures into RunErrors ---------------------------------------------------

    def _status_error(self, status: int, headers: httpx.Headers, raw: bytes) -> RunError:
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        upstream_type, message = _error_detail(payload)
        message = self._redact(message) or f"HTTP {status}"
        log.warning(
            "upstream_error",
            status=status,
            upstream_type=upstream_type,
            upstream_request_id=headers.get("request-id"),
        )
        return _error_for(status, message, retry_after_from(headers))

    def _event_failure(self, error: RunError) -> RunError:
        """Settle the breaker for an error event inside a 2xx stream and return the error."""
        if (error.upstream_status or 0) >= 500:
            self._record_failure(error.retry_after)
        return error

    def _broken_off(self) -> RunError:
        self._record_failure(None)
        return RunError("upstream_error", "The upstream stream ended before message_stop.")

    def _transport_failure(self, exc: httpx.TransportError) -> RunError:
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

    def _redact(self, text: str) -> str:
        text = redact(text)
        return text.replace(self._api_key, "[redacted]") if self._api_key else text


class UpstreamStream:
    """A 2xx streaming answer, passed on byte for byte while usage is read off the side.

    Iterate it once for the raw SSE bytes as they arrive; it raises RunError if the stream
    breaks off (bytes already yielded stay yielded). An ``event: error`` inside the stream is
    passed through like any other event and also kept in ``error``.
    """

    def __init__(self, runner: AnthropicApiRunner, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = passable_headers(response.headers)
        self.error: RunError | None = None
        self._runner = runner
        self._response = response
        self._reader = _MessageReader(None, runner._redact)
        self._tail = b""

    @property
    def usage(self) -> dict[str, int]:
        """The tokens upstream reported so far."""
        return self._reader.usage

    @property
    def model(self) -> str | None:
        """The model upstream named in its message_start."""
        return self._reader.model

    @property
    def stop_reason(self) -> str | None:
        """Why the message stopped, once message_delta said so."""
        return self._reader.stop_reason

    @property
    def completed(self) -> bool:
        """True once message_stop went by."""
        return self._reader.stopped

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield upstream's bytes unchanged, as they arrive."""
        try:
            async for chunk in self._response.aiter_bytes():
                self._scan(chunk)
                yield chunk
        except httpx.TransportError as exc:
            raise self._runner._transport_failure(exc) from None
        if not self.completed and self.error is None:
            raise self._runner._broken_off()

    async def aclose(self) -> None:
        """Close the upstream response (the connection goes back to the pool when read)."""
        await self._response.aclose()

    async def __aenter__(self) -> UpstreamStream:
        """Use as ``async with``: closed at the end."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the upstream response."""
        await self.aclose()

    def _scan(self, chunk: bytes) -> None:
        # Only whole lines are parsed, and only the few that can carry usage or an error.
        data = self._tail + chunk if self._tail else chunk
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            line = data[start:end]
            start = end + 1
            if line.startswith(b"data:") and (b"message_" in line or b"error" in line):
                self._line(line[5:])
        self._tail = data[start:] if len(data) - start <= _SCAN_TAIL_LIMIT else b""

    def _line(self, raw: bytes) -> None:
        event = self._reader.feed(raw)
        if isinstance(event, RunError):
            self.error = self._runner._event_failure(event)


class _MessageReader:
    """Turns the lines of one Messages SSE stream into RunEvents."""

    def __init__(self, model: str | None, clean: Callable[[str], str]) -> None:
        self.model = model
        self._clean = clean
        self.usage: dict[str, int] = {}
        self.stop_reason: str | None = None
        self.stopped = False
        self._parts: list[str] = []

    def feed(self, data: str | bytes) -> RunEvent | RunError | None:
        """The event an SSE ``data:`` payload stands for, a RunError for an error event, or
        None."""
        try:
            event = json.loads(data)
        except ValueError:
            return None
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "content_block_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta" and delta.get("text"):
                self._parts.append(str(delta["text"]))
                return TextDelta(self._parts[-1])
        elif kind == "message_start" and isinstance(event.get("message"), dict):
            message = event["message"]
            if isinstance(message.get("model"), str):
                self.model = message["model"]
            _merge_usage(self.usage, message.get("usage"))
            return RunStarted(session_id=None, model=self.model)
        elif kind == "message_delta":
            _merge_usage(self.usage, event.get("usage"))
            delta = event.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self.stop_reason = delta["stop_reason"]
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            return _event_error(event, self._clean)
        return None

    def result(self, duration_ms: int) -> RunResult:
        """The RunResult once message_stop was seen."""
        usage = {"input_tokens": 0, "output_tokens": 0, **self.usage}
        return RunResult(
            text="".join(self._parts),
            model=self.model,
            usage=usage,
            cost_usd=cost_usd(self.model, usage) if self.model else None,
            duration_ms=duration_ms,
            stop_reason=self.stop_reason,
        )


def _event_error(event: dict[str, Any], clean: Callable[[str], str]) -> RunError:
    upstream_type, message = _error_detail(event)
    status = _EVENT_ERROR_STATUS.get(upstream_type or "", 500)
    return _error_for(status, clean(message) or upstream_type or "error event", None)


def _error_for(status: int, message: str, retry_after: float | None) -> RunError:
    """The documented RunError for an upstream HTTP status."""
    if status == 429:
        return RunError(
            "upstream_rate_limited",
            f"The upstream API rate-limited this server's API key: {message}",
            retry_after=retry_after,
            upstream_status=status,
        )
    if status in (401, 403):
        return RunError(
            "upstream_auth_error",
            f"The upstream API refused the server's API key "
            f"({status}): {message}. The operator must fix ANTHROPIC_API_KEY.",
            upstream_status=status,
        )
    if status == 413:
        return RunError(
            "upstream_request_too_large",
            f"The upstream API refused the request as too large: {message}",
            upstream_status=status,
        )
    if status in _OVERLOADED_STATUSES:
        return RunError(
            "upstream_overloaded",
            f"The upstream API is overloaded or unavailable ({status}): {message}",
            retry_after=retry_after,
            upstream_status=status,
        )
    if 400 <= status < 500:
        return RunError("upstream_bad_request", message, upstream_status=status)
    return RunError(
        "upstream_error",
        f"The upstream API answered HTTP {status}: {message}",
        retry_after=retry_after,
        upstream_status=status,
    )


def _forwardable(name: str, value: str) -> str:
    if not (value.isascii() and value.isprintable()):
        raise RunError(
            "invalid_request", f"The {name} header holds characters that cannot be forwarded."
        )
    return value.strip()


async def _read_limited(response: httpx.Response) -> bytes:
    """Up to 64 KiB of an error body; a body that breaks off is as good as empty."""
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            parts.append(chunk)
            size += len(chunk)
            if size >= _ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError:
        return b""
    finally:
        await response.aclose()
    return b"".join(parts)


def api_runner(settings: Settings, breaker: CircuitBreaker | None = None) -> AnthropicApiRunner:
    """The API runner for ``settings`` (CCGATE_BACKEND=api), with its own circuit breaker
    unless one (e.g. shared between nodes) is given."""
    if not settings.anthropic_api_key:
        raise ConfigError(
            "ANTHROPIC_API_KEY", "", "an Anthropic API key (CCGATE_BACKEND=api needs one)"
        )
    return AnthropicApiRunner(
        api_key=settings.anthropic_api_key,
        base_url=settings.anthropic_base_url,
        breaker=breaker
        or CircuitBreaker(settings.circuit_failures, settings.circuit_cooldown_secs),
        max_connections=settings.api_max_connections,
        timeout_secs=settings.upstream_timeout_secs,
    )
