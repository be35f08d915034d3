"""What a runner takes (RunRequest), what it yields (RunEvent) and how it fails (RunError)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ccgate.runners.plan_windows import PlanWindow
from ccgate.turns import ContentBlock


@dataclass(frozen=True)
class RunRequest:
    """One prompt to run: content blocks for the user turn plus the settings argv fixes.

    ``history`` holds the earlier turns of the conversation as Anthropic Messages
    (``{"role": "user"|"assistant", "content": [blocks]}``), oldest first, alternating and
    ending with an assistant turn; ``content`` is the new user turn that follows them.
    """

    content: list[ContentBlock]
    model: str
    history: list[dict[str, Any]] = field(default_factory=list)
    system_prompt: str | None = None
    append_system_prompt: str | None = None
    timeout_secs: float = 600.0
    idle_timeout_secs: float = 0.0
    stream: bool = True
    # Who the run is for (the API key's id): a warm process never serves two owners.
    owner: str | None = None
    # Sampling and length controls. The API backend sends them upstream; the CLI backend
    # has no flags for them and ignores them (documented).
    max_tokens: int | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None

    @property
    def prompt_text(self) -> str:
        """The user turn's text blocks, joined by newlines."""
        return "\n".join(block["text"] for block in self.content if block["type"] == "text")

    @classmethod
    def from_text(cls, prompt: str, model: str, **kwargs: Any) -> RunRequest:
        """Build a request whose user turn is one text block."""
        return cls(content=[{"type": "text", "text": prompt}], model=model, **kwargs)


@dataclass(frozen=True)
class RunStarted:
    """The backend accepted the run; carries its session id and resolved model when known."""

    session_id: str | None
    model: str | None


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer, in order; the deltas concatenate to the final text."""

    text: str


@dataclass(frozen=True)
class RunResult:
    """The finished run: final text, usage, cost and timings."""

    text: str
    session_id: str | None = None
    model: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    cost_usd: float | None = None
    duration_ms: int | None = None
    stop_reason: str | None = None
    # The plan windows the CLI reported during the run, and a warning when one nears its
    # limit (``allowed_warning``: the run still succeeded).
    plan_windows: tuple[PlanWindow, ...] = ()
    warning: str | None = None


RunEvent = RunStarted | TextDelta | RunResult


class RunError(Exception):
    """A run that failed in a way a client can act on; ``error_type`` is the documented type."""

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        retry_after: float | None = None,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.retry_after = retry_after
        self.upstream_status = upstream_status


class Runner(Protocol):
    """Anything that turns a RunRequest into RunEvents, ending with one RunResult."""

    def run(self, request: RunRequest) -> AsyncGenerator[RunEvent, None]:
        """Yield events for ``request``; raise RunError on failure. Cancelling stops the run."""
        ...

    async def aclose(self) -> None:
        """Release what finished runs still hold (processes exiting, temp directories)."""
        ...


async def collect(runner: Runner, request: RunRequest) -> RunResult:
    """Run ``request`` to the end and return its RunResult; the run is closed either way."""
    async with contextlib.aclosing(runner.run(request)) as events:
        async for event in events:
            if isinstance(event, RunResult):
                return event
    raise RunError("cli_error", "the run ended without a result")
