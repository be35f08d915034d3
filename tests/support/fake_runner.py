"""An in-memory Runner: scripted outcomes, no subprocess, for queue and HTTP tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from ccgate.runners.base import RunError, RunEvent, RunRequest, RunResult, RunStarted, TextDelta


@dataclass
class FakeRunner:
    """Answers ``reply: <prompt>`` unless told to fail or to block until released."""

    error: RunError | None = None
    reply: str | None = None
    delay: float = 0.0
    block: bool = False
    released: asyncio.Event = field(default_factory=asyncio.Event)
    started: list[RunRequest] = field(default_factory=list)
    running: int = 0
    peak_running: int = 0
    cancelled: int = 0

    async def run(self, request: RunRequest) -> AsyncGenerator[RunEvent, None]:
        """Yield a start, two deltas and a result, after waiting for release when blocking."""
        self.started.append(request)
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)
        try:
            yield RunStarted("sess-1", request.model)
            if self.block:
                await self.released.wait()
            if self.error is not None:
                raise self.error
            text = (
                self.reply
                if self.reply is not None
                else (
                    "reply: " + "".join(b["text"] for b in request.content if b["type"] == "text")
                )
            )
            for start in range(0, len(text), 3):
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield TextDelta(text[start : start + 3])
            yield RunResult(
                text=text,
                session_id="sess-1",
                model=request.model,
                usage={"input_tokens": 5, "output_tokens": 7},
                cost_usd=0.001,
                duration_ms=3,
            )
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1

    async def aclose(self) -> None:
        """Nothing to release: the fake holds no processes."""
