"""The configured backend: its runner, what it can do, and the one factory that builds it.

``serve``, ``doctor`` and ``ccgate run`` all build their backend here, so they agree on what
``CCGATE_BACKEND`` means. Code that behaves differently per backend reads a declared
capability (``backend.capabilities.direct``), never the backend's name.

A backend is one module with a builder, plus its row in ``BACKENDS`` below (and its name in
``config.BACKEND_NAMES``, which a test keeps equal to the registry's).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ccgate.runners.anthropic_api import AnthropicApiRunner, api_client
from ccgate.runners.base import Runner
from ccgate.runners.pooled_cli import cli_runner

if TYPE_CHECKING:
    from ccgate.circuit import CircuitBreaker
    from ccgate.config import Settings
    from ccgate.runners.anthropic_client import UpstreamReply
    from ccgate.runners.anthropic_sse import UpstreamStream

# A registered backend's name (``CCGATE_BACKEND``); the registry below is the list.
BackendName = str


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
    # Upstream knows no family names: ``sonnet``, ``opus``... are mapped to full model ids.
    full_model_ids: bool


class PassThrough(Protocol):
    """A client for doors that forward a Messages body upstream as written."""

    async def send(self, body: dict[str, Any], client_headers: Mapping[str, str]) -> UpstreamReply:
        """Send ``body`` and return the whole reply."""
        ...

    async def open_stream(
        self, body: dict[str, Any], client_headers: Mapping[str, str]
    ) -> UpstreamStream:
        """Send ``body`` with ``stream: true`` and return the open byte stream."""
        ...

    async def count_tokens(
        self, body: dict[str, Any], client_headers: Mapping[str, str]
    ) -> dict[str, Any]:
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


@dataclass(frozen=True)
class BuildContext:
    """What a builder may use besides the settings."""

    # The claude CLI found at start-up (None: look ``claude`` up on PATH at each run).
    cli_path: str | None
    # A circuit breaker to use instead of the backend's own (e.g. one shared between nodes).
    breaker: CircuitBreaker | None


@dataclass(frozen=True)
class Parts:
    """What a builder returns: the runner, and the pass-through client and breaker if any."""

    runner: Runner
    passthrough: PassThrough | None = None
    breaker: CircuitBreaker | None = None


@dataclass(frozen=True)
class BackendSpec:
    """One registered backend: what it can do, how it is built, how doctor describes it."""

    capabilities: Capabilities
    build: Callable[[Settings, BuildContext], Parts]
    # One line for ``ccgate doctor`` on a backend that needs no CLI.
    describe: Callable[[Settings], str]
    # How messages name it ("the API backend").
    title: str


def _build_cli(settings: Settings, context: BuildContext) -> Parts:
    return Parts(cli_runner(settings, context.cli_path))


def _build_api(settings: Settings, context: BuildContext) -> Parts:
    client = api_client(settings, context.breaker)
    return Parts(AnthropicApiRunner(client), passthrough=client, breaker=client.breaker)


BACKENDS: Mapping[BackendName, BackendSpec] = {
    "cli": BackendSpec(
        Capabilities(
            direct=False,
            passthrough=False,
            client_tools=False,
            needs_cli=True,
            circuit_breaker=False,
            counts_tokens=False,
            honours_max_tokens=False,
            full_model_ids=False,
        ),
        _build_cli,
        describe=lambda settings: "the logged-in claude CLI",
        title="CLI",
    ),
    "api": BackendSpec(
        Capabilities(
            direct=True,
            passthrough=True,
            client_tools=True,
            needs_cli=False,
            circuit_breaker=True,
            counts_tokens=True,
            honours_max_tokens=True,
            full_model_ids=True,
        ),
        _build_api,
        describe=lambda settings: (
            f"the Anthropic API at {settings.anthropic_base_url} with the operator's "
            "ANTHROPIC_API_KEY"
        ),
        title="API",
    ),
}
CAPABILITIES: Mapping[BackendName, Capabilities] = {
    name: spec.capabilities for name, spec in BACKENDS.items()
}


def backend_name(settings: Settings) -> BackendName:
    """The backend ``CCGATE_BACKEND`` names (the settings have validated it)."""
    if settings.backend not in BACKENDS:
        raise ValueError(f"no backend named {settings.backend!r}")
    return settings.backend


def backend_spec(settings: Settings) -> BackendSpec:
    """The registry row of the backend ``settings`` configure."""
    return BACKENDS[backend_name(settings)]


def build_backend(
    settings: Settings,
    *,
    cli_path: str | None = None,
    breaker: CircuitBreaker | None = None,
    runner: Runner | None = None,
) -> Backend:
    """The backend ``settings`` configure; ``runner`` replaces its runner (tests: a handed-in
    API runner keeps its own client as the pass-through)."""
    name = backend_name(settings)
    spec = BACKENDS[name]
    if runner is None:
        parts = spec.build(settings, BuildContext(cli_path=cli_path, breaker=breaker))
    elif isinstance(runner, AnthropicApiRunner):
        parts = Parts(runner, passthrough=runner.client, breaker=runner.breaker)
    else:
        parts = Parts(runner)
    return Backend(
        name=name,
        runner=parts.runner,
        capabilities=spec.capabilities,
        passthrough=parts.passthrough,
        breaker=parts.breaker,
    )
