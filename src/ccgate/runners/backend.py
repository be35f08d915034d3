"""The configured backend: its runner, what it can do, and the one factory that builds it.

``serve``, ``doctor`` and ``ccgate run`` all build their backend here, so they agree on what
``CCGATE_BACKEND`` means. Code that behaves differently per backend reads a declared
capability (``backend.capabilities.direct``), never the backend's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ccgate.runners.base import Runner

if TYPE_CHECKING:
    from ccgate.circuit import CircuitBreaker
    from ccgate.config import Settings

BackendName = Literal["cli", "api"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared once."""

    # The compatible doors call the runner directly instead of queueing a job.
    direct: bool
    # The Anthropic door may forward a request body as written (``Backend.passthrough``).
    passthrough: bool
    # Requests may carry client tools (tool use is the client's business, nothing runs here).
    client_tools: bool
    # The backend starts the claude CLI: health, doctor and the sandbox check apply.
    needs_cli: bool
    # Upstream failures open a circuit breaker.
    circuit_breaker: bool
    # ``/v1/messages/count_tokens`` is answered by the upstream.
    counts_tokens: bool
    # The backend honours a request's ``max_tokens`` (the CLI has no flag for it).
    honours_max_tokens: bool


CAPABILITIES: Mapping[BackendName, Capabilities] = {
    "cli": Capabilities(
        direct=False,
        passthrough=False,
        client_tools=False,
        needs_cli=True,
        circuit_breaker=False,
        counts_tokens=False,
        honours_max_tokens=False,
    ),
    "api": Capabilities(
        direct=True,
        passthrough=True,
        client_tools=True,
        needs_cli=False,
        circuit_breaker=True,
        counts_tokens=True,
        honours_max_tokens=True,
    ),
}


class UpstreamReplyLike(Protocol):
    """A whole upstream answer (see ``runners.anthropic_api.UpstreamReply``)."""

    status: int
    body: bytes
    headers: dict[str, str]
    usage: dict[str, int]
    model: str | None


@runtime_checkable
class PassThrough(Protocol):
    """A client for doors that forward a Messages body upstream as written."""

    async def send(self, body: dict[str, Any], client_headers: Mapping[str, str]) -> Any:
        """Send ``body`` and return the whole reply."""
        ...

    async def open_stream(self, body: dict[str, Any], client_headers: Mapping[str, str]) -> Any:
        """Send ``body`` with ``stream: true`` and return the open byte stream."""
        ...

    async def count_tokens(self, body: dict[str, Any], client_headers: Mapping[str, str]) -> Any:
        """Ask the upstream to count the tokens of ``body``."""
        ...


@dataclass
class Backend:
    """The runner every turn goes to, with its declared capabilities."""

    name: BackendName
    runner: Runner
    capabilities: Capabilities
    passthrough: PassThrough | None = None
    breaker: CircuitBreaker | None = None

    def require_passthrough(self) -> PassThrough:
        """The pass-through client; only doors that checked ``capabilities.passthrough``
        call this."""
        if self.passthrough is None:
            raise RuntimeError(f"the {self.name} backend has no pass-through client")
        return self.passthrough

    async def aclose(self) -> None:
        """Release the runner's resources (processes, connections)."""
        await self.runner.aclose()


def backend_name(settings: Settings) -> BackendName:
    """The backend ``CCGATE_BACKEND`` names (the settings have validated it)."""
    return "api" if settings.backend == "api" else "cli"


def build_backend(
    settings: Settings,
    *,
    cli_path: str | None = None,
    breaker: CircuitBreaker | None = None,
    runner: Runner | None = None,
) -> Backend:
    """The backend ``settings`` configure; ``runner`` replaces its runner (tests)."""
    name = backend_name(settings)
    if runner is None:
        if name == "api":
            from ccgate.runners.anthropic_api import api_runner

            runner = api_runner(settings, breaker)
        else:
            from ccgate.runners.cli import cli_runner

            runner = cli_runner(settings, cli_path)
    passthrough = runner if isinstance(runner, PassThrough) else None
    return Backend(
        name=name,
        runner=runner,
        capabilities=CAPABILITIES[name],
        passthrough=passthrough,
        breaker=getattr(runner, "breaker", None),
    )
