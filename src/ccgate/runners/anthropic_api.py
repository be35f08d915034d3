"""The Anthropic API runner: a RunRequest as one streaming Messages call, read as RunEvents.

It serves native runs and jobs like the CLI runner does. The upstream calls themselves
(headers, the breaker, errors) are the client's (``anthropic_client``), which the API
backend also hands to the doors as their pass-through client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from ccgate.circuit import CircuitBreaker
from ccgate.config import ConfigError, Settings
from ccgate.runners.anthropic_client import MESSAGES_PATH, AnthropicClient
from ccgate.runners.anthropic_sse import MessageReader
from ccgate.runners.base import RunError, RunEvent, RunRequest

DEFAULT_MAX_TOKENS = 4096


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


class AnthropicApiRunner:
    """Runs requests against the Anthropic Messages API through ``client``."""

    def __init__(self, client: AnthropicClient) -> None:
        self.client = client

    @property
    def breaker(self) -> CircuitBreaker:
        """The client's circuit breaker."""
        return self.client.breaker

    async def aclose(self) -> None:
        """Close the client's connection pool."""
        await self.client.aclose()

    async def run(self, request: RunRequest) -> AsyncGenerator[RunEvent, None]:
        """Yield RunStarted, a TextDelta per text delta and the RunResult; raise RunError."""
        client = self.client
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

        response = await client.post(
            MESSAGES_PATH, message_body(request), {}, stream=True, limit=limit
        )
        reader = MessageReader(request.model, client.redact)
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
                    raise client.transport_failure(exc) from None
                if line is None:
                    raise client.broken_off()
                if not line.startswith("data:"):
                    continue
                event = reader.feed(line[5:])
                if isinstance(event, RunError):
                    raise client.event_failure(event)
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


def api_client(settings: Settings, breaker: CircuitBreaker | None = None) -> AnthropicClient:
    """The API client for ``settings`` (CCGATE_BACKEND=api), with its own circuit breaker
    unless one (e.g. shared between nodes) is given."""
    if not settings.anthropic_api_key:
        raise ConfigError(
            "ANTHROPIC_API_KEY", "", "an Anthropic API key (CCGATE_BACKEND=api needs one)"
        )
    return AnthropicClient(
        api_key=settings.anthropic_api_key,
        base_url=settings.anthropic_base_url,
        breaker=breaker
        or CircuitBreaker(settings.circuit_failures, settings.circuit_cooldown_secs),
        max_connections=settings.api_max_connections,
        timeout_secs=settings.upstream_timeout_secs,
    )
