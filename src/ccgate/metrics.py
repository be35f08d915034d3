"""Prometheus metrics: every family ccgate exports, and the small hooks the rest of it calls.

The families live in one registry of their own. When ``PROMETHEUS_MULTIPROC_DIR`` is set,
prometheus-client keeps every value in files there, and ``exposition`` merges the files of
all worker processes, so a scrape of any worker sees the whole server (docs/metrics.md).

Labels stay bounded: door names, HTTP statuses, documented error types, job statuses, model
names the server knows (anything else is ``other``), and key names (keys are few). Never a
raw path, a prompt or a secret.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from ccgate.doors import COMPAT, door_of
from ccgate.models import API_FAMILY_ALIASES, KNOWN_MODELS
from ccgate.runners.base import RunEvent, Runner, RunRequest, RunResult, TextDelta
from ccgate.runners.plan_windows import PlanWindow

if TYPE_CHECKING:
    from ccgate.runners.anthropic_client import UpstreamReply
    from ccgate.runners.anthropic_sse import UpstreamStream
    from ccgate.runners.backend import PassThrough

REGISTRY = CollectorRegistry(auto_describe=True)
OTHER = "other"
NONE = "none"

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
_OVERHEAD_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)

HTTP_REQUESTS = Counter(
    "ccgate_http_requests",
    "HTTP requests answered, by door, status code and error type.",
    ["door", "status", "error_type"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "ccgate_http_request_duration_seconds",
    "Time from request start to the last byte sent.",
    ["door"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
OVERHEAD = Histogram(
    "ccgate_gateway_overhead_seconds",
    "Request time spent in ccgate itself: duration minus queue wait and runner time.",
    ["door", "backend"],
    buckets=_OVERHEAD_BUCKETS,
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "ccgate_queue_wait_seconds",
    "Time a job waited in the queue before it started.",
    ["door"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
CLI_SPAWN = Histogram(
    "ccgate_cli_spawn_seconds",
    "Cold CLI start: from spawning claude to its first output.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
FIRST_TOKEN = Histogram(
    "ccgate_time_to_first_token_seconds",
    "Time from a run's start to its first text.",
    ["door", "backend", "model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "ccgate_jobs_finished",
    "Jobs ended on this server, by final status.",
    ["status"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "ccgate_queue_depth",
    "Jobs waiting in the (shared) queue.",
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)
RUNS_IN_PROGRESS = Gauge(
    "ccgate_runs_in_progress",
    "Runs executing right now.",
    ["backend"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
SSE_SUBSCRIBERS = Gauge(
    "ccgate_sse_subscribers",
    "Open job event streams (GET /api/v1/jobs/{id}/sse).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
TOKENS = Counter(
    "ccgate_tokens",
    "Tokens settled, by model, key and kind (input, output, cache_read, cache_creation).",
    ["model", "key", "kind"],
    registry=REGISTRY,
)
COST = Counter(
    "ccgate_cost_usd", "Cost settled in USD, by model and key.", ["model", "key"], registry=REGISTRY
)
LIMIT_REFUSALS = Counter(
    "ccgate_limit_refusals",
    "Requests refused by a limit (429), by the limit's error type.",
    ["limit"],
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "ccgate_webhook_deliveries",
    "Webhook delivery attempts, by outcome (delivered, retry, failed).",
    ["outcome"],
    registry=REGISTRY,
)
CIRCUIT_STATE = Gauge(
    "ccgate_circuit_state",
    "The API backend's circuit breaker: 1 for its current state.",
    ["state"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
POOL_PROCESSES = Gauge(
    "ccgate_pool_processes",
    "Warm-pool CLI processes, by state (idle, busy, starting).",
    ["state"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
PLAN_WINDOW_UTILIZATION = Gauge(
    "ccgate_plan_window_utilization",
    "A subscription plan window's utilization as the CLI "
    "last reported it (0 to 1), by window (five_hour, seven_day, ...).",
    ["window"],
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)
PLAN_WINDOW_CLOSED = Gauge(
    "ccgate_plan_window_closed",
    "1 while a plan window refuses requests (rejected and not yet reset), else 0.",
    ["window"],
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)
PLAN_WINDOW_RESETS_AT = Gauge(
    "ccgate_plan_window_resets_at_seconds",
    "When a plan window resets, as a Unix time.",
    ["window"],
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)
POOL_REQUESTS = Counter(
    "ccgate_pool_requests",
    "Runs offered to the warm pool, by outcome (hit, miss, bypass).",
    ["outcome"],
    registry=REGISTRY,
)

CIRCUIT_STATES = ("closed", "open", "half_open")
POOL_STATES = ("idle", "busy", "starting")
_POOL_OUTCOMES = {"hits": "hit", "misses": "miss", "bypasses": "bypass"}
_TOKEN_KINDS = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_read_input_tokens": "cache_read",
    "cache_creation_input_tokens": "cache_creation",
}

_DEFAULT_MODELS = frozenset(
    {
        *API_FAMILY_ALIASES,
        *API_FAMILY_ALIASES.values(),
        *(model_id for model_id, _, _ in KNOWN_MODELS),
    }
)
_model_names: frozenset[str] = _DEFAULT_MODELS
_multiproc_dir: str | None = None


def configure(
    *, allowed_models: tuple[str, ...], aliases: Mapping[str, str], multiproc_dir: str | None
) -> None:
    """Name the models that may appear as labels (exact allowlist names, aliases and their
    targets, the built-in names) and where worker processes keep their values."""
    global _model_names, _multiproc_dir
    exact = {name for name in allowed_models if "*" not in name}
    _model_names = _DEFAULT_MODELS | exact | set(aliases) | set(aliases.values())
    _multiproc_dir = multiproc_dir


def reset() -> None:
    """Forget what ``configure`` set (for tests)."""
    global _model_names, _multiproc_dir
    _model_names = _DEFAULT_MODELS
    _multiproc_dir = None


def model_label(model: str | None) -> str:
    """``model`` when the server knows the name, else ``other``: a wildcard such as
    ``claude-*`` must not let clients mint a series per request."""
    if not model:
        return NONE
    return model if model in _model_names else OTHER


def door_label(path: str) -> str:
    """The door a path belongs to, from a fixed set (never the raw path): the door registry's
    name for the API paths, and the server's own pages by kind."""
    if path.startswith("/admin"):
        return "admin"
    if path in ("/health", "/readyz"):
        return "health"
    if path == "/metrics":
        return "metrics"
    if path.startswith(("/api/", "/v1/")) or COMPAT.serves(path):
        return door_of(path).name
    return OTHER


# -- per-request timing ---------------------------------------------------------------------


class RequestTiming:
    """What one request spent waiting outside ccgate (queue, CLI, upstream), in seconds."""

    __slots__ = ("__weakref__", "door", "waited_secs")

    def __init__(self, door: str) -> None:
        self.door = door
        self.waited_secs = 0.0


_timing: contextvars.ContextVar[RequestTiming | None] = contextvars.ContextVar(
    "ccgate_request_timing", default=None
)


def begin_request(door: str) -> RequestTiming:
    """Start timing the current request (its task and the tasks it starts share it)."""
    timing = RequestTiming(door)
    _timing.set(timing)
    return timing


def current_timing() -> RequestTiming | None:
    """The timing of the request this code runs for, if any."""
    return _timing.get()


def attach_timing(timing: RequestTiming) -> None:
    """Make ``timing`` current in this task (a job's task: its submitter's timing)."""
    _timing.set(timing)


@contextlib.contextmanager
def waiting() -> Iterator[None]:
    """Count the block's time as waiting outside ccgate for the current request."""
    timing = _timing.get()
    started = time.monotonic()
    try:
        yield
    finally:
        if timing is not None:
            timing.waited_secs += time.monotonic() - started


class Children:
    """The labelled children of one family, each looked up in prometheus-client once.

    ``family.labels(...)`` checks and stringifies the values and takes a lock on every call;
    the hot path asks for the same few children on every request. The children kept are the
    family's own (the same objects ``labels`` returns), at most ``limit`` of them: beyond that,
    ``labels`` as before. So the series, and what they count, stay exactly as they were."""

    __slots__ = ("_children", "_family", "_limit")

    def __init__(self, family: Any, limit: int = 512) -> None:
        self._family = family
        self._limit = limit
        self._children: dict[tuple[Any, ...], Any] = {}

    def get(self, *labels: Any) -> Any:
        """The child for ``labels`` (what ``family.labels(*labels)`` returns)."""
        child = self._children.get(labels)
        if child is None:
            child = self._family.labels(*labels)
            if len(self._children) < self._limit:
                self._children[labels] = child
        return child


_HTTP_REQUESTS = Children(HTTP_REQUESTS)
_FIRST_TOKEN = Children(FIRST_TOKEN)
_TOKENS = Children(TOKENS)
_COST = Children(COST)


@dataclass(frozen=True)
class RequestObserver:
    """Pre-bound children for one (door, backend): the hot path only looks up statuses."""

    duration: Any
    overhead: Any
    door: str

    def observe(
        self, status: int, error_type: str | None, seconds: float, timing: RequestTiming | None
    ) -> None:
        """Count the request and observe its duration and ccgate's share of it."""
        _HTTP_REQUESTS.get(self.door, status, error_type or NONE).inc()
        self.duration.observe(seconds)
        waited = timing.waited_secs if timing is not None else 0.0
        self.overhead.observe(max(0.0, seconds - waited))


_observers: dict[tuple[str, str], RequestObserver] = {}


def request_observer(door: str, backend: str) -> RequestObserver:
    """The observer of one door on one backend, made once."""
    found = _observers.get((door, backend))
    if found is None:
        found = _observers[(door, backend)] = RequestObserver(
            HTTP_DURATION.labels(door), OVERHEAD.labels(door, backend), door
        )
    return found


# -- jobs, runs, settlement -----------------------------------------------------------------


def observe_queue_wait(door: str, seconds: float) -> None:
    """A job started after waiting ``seconds`` in the queue."""
    QUEUE_WAIT.labels(door).observe(max(0.0, seconds))


def job_finished(status: str) -> None:
    """A job ended with ``status``."""
    JOBS_FINISHED.labels(status).inc()


def observe_cli_spawn(seconds: float) -> None:
    """A cold CLI process printed its first line ``seconds`` after it was spawned."""
    CLI_SPAWN.observe(seconds)


def record_usage(
    model: str | None, key: str, usage: Mapping[str, Any] | None, cost_usd: float | None
) -> None:
    """Count a settled run's tokens and cost against its model and key."""
    label = model_label(model)
    if usage:
        for field_name, kind in _TOKEN_KINDS.items():
            count = usage.get(field_name)
            if isinstance(count, int) and count > 0:
                _TOKENS.get(label, key, kind).inc(count)
    if cost_usd is not None and cost_usd > 0:
        _COST.get(label, key).inc(cost_usd)


def limit_refused(limit: str) -> None:
    """A request was refused by the limit whose error type is ``limit``."""
    LIMIT_REFUSALS.labels(limit).inc()


def webhook_attempted(outcome: str) -> None:
    """A webhook delivery attempt ended with ``outcome`` (delivered, retry, failed)."""
    WEBHOOK_DELIVERIES.labels(outcome).inc()


def sse_opened() -> None:
    """A job event stream opened."""
    SSE_SUBSCRIBERS.inc()


def sse_closed() -> None:
    """A job event stream closed."""
    SSE_SUBSCRIBERS.dec()


class MeteredRunner:
    """A Runner that times its inner runner: time to first text, and the time a request
    waits on it (which ``ccgate_gateway_overhead_seconds`` leaves out). The inner runner
    itself (its pool, say) stays reachable as ``Backend.runner``."""

    def __init__(self, inner: Runner, backend: str) -> None:
        self.inner = inner
        self.backend = backend
        self._in_progress = RUNS_IN_PROGRESS.labels(backend)

    async def run(self, request: RunRequest) -> AsyncGenerator[RunEvent, None]:
        """Yield the inner runner's events, timing each wait for the next one."""
        timing = _timing.get()
        door = timing.door if timing is not None else NONE
        started = time.monotonic()
        first = True
        self._in_progress.inc()
        try:
            async with contextlib.aclosing(self.inner.run(request)) as events:
                while True:
                    with waiting():
                        try:
                            event = await events.__anext__()
                        except StopAsyncIteration:
                            return
                    if first and isinstance(event, TextDelta | RunResult):
                        first = False
                        _FIRST_TOKEN.get(door, self.backend, model_label(request.model)).observe(
                            time.monotonic() - started
                        )
                    yield event
        finally:
            self._in_progress.dec()

    async def aclose(self) -> None:
        """Close the inner runner."""
        await self.inner.aclose()


class MeteredPassThrough:
    """A pass-through client whose calls count as runs in progress and as waiting upstream;
    the first byte of an answer observes the time to first token."""

    def __init__(self, inner: PassThrough, backend: str) -> None:
        self.inner = inner
        self.backend = backend
        self._in_progress = RUNS_IN_PROGRESS.labels(backend)

    async def send(self, body: dict[str, Any], client_headers: Mapping[str, str]) -> UpstreamReply:
        """The non-streaming pass-through call, timed as waiting upstream."""
        started = time.monotonic()
        self._in_progress.inc()
        try:
            with waiting():
                reply = await self.inner.send(body, client_headers)
        finally:
            self._in_progress.dec()
        self._first_token(body.get("model"), started)
        return reply

    async def open_stream(
        self, body: dict[str, Any], client_headers: Mapping[str, str]
    ) -> UpstreamStream:
        """The streaming pass-through call; its chunks are timed as they come."""
        started = time.monotonic()
        with waiting():
            stream = await self.inner.open_stream(body, client_headers)
        model = body.get("model")

        async def timed(chunks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
            first = True
            self._in_progress.inc()
            try:
                while True:
                    with waiting():
                        try:
                            chunk = await anext(chunks)
                        except StopAsyncIteration:
                            return
                    if first:
                        first = False
                        self._first_token(model, started)
                    yield chunk
            finally:
                self._in_progress.dec()
                await chunks.aclose()

        stream.observe = timed
        return stream

    async def count_tokens(
        self, body: dict[str, Any], client_headers: Mapping[str, str]
    ) -> dict[str, Any]:
        """Token counting, passed on untimed."""
        return await self.inner.count_tokens(body, client_headers)

    def _first_token(self, model: Any, started: float) -> None:
        timing = _timing.get()
        _FIRST_TOKEN.get(
            timing.door if timing is not None else NONE,
            self.backend,
            model_label(str(model) if model else None),
        ).observe(time.monotonic() - started)


# -- sampled state ----------------------------------------------------------------------------


class StateSampler:
    """Copies state that lives in other objects (queue depth, circuit, warm pool) into the
    gauges and counters; run every few seconds and before each scrape."""

    def __init__(self) -> None:
        self._pool_seen: dict[str, int] = {}

    def sample_circuit(self, state: str | None) -> None:
        """Set the circuit gauge to ``state`` (None: no breaker, every state 0)."""
        for name in CIRCUIT_STATES:
            CIRCUIT_STATE.labels(name).set(1 if name == state else 0)

    def sample_pool(self, stats: Mapping[str, Any] | None) -> None:
        """Set the pool gauges and add the pool's counter growth since the last sample."""
        if stats is None:
            return
        for state in POOL_STATES:
            POOL_PROCESSES.labels(state).set(int(stats.get(state, 0)))
        for name, outcome in _POOL_OUTCOMES.items():
            now = int(stats.get(name, 0))
            grown = now - self._pool_seen.get(name, 0)
            if grown > 0:
                POOL_REQUESTS.labels(outcome).inc(grown)
            self._pool_seen[name] = now

    def sample_plan_windows(self, windows: Iterable[PlanWindow], now: datetime) -> None:
        """Set the plan-window gauges from the windows last seen (names come from the CLI:
        a handful, so bounded)."""
        for window in windows:
            if window.utilization is not None:
                PLAN_WINDOW_UTILIZATION.labels(window.name).set(window.utilization)
            PLAN_WINDOW_CLOSED.labels(window.name).set(1 if window.closed_at(now) else 0)
            if window.resets_at is not None:
                PLAN_WINDOW_RESETS_AT.labels(window.name).set(window.resets_at.timestamp())

    def sample_queue(self, depth: int) -> None:
        """Set the queue depth gauge."""
        QUEUE_DEPTH.set(depth)


def exposition() -> tuple[bytes, str]:
    """The metrics in the Prometheus text format, with their content type; with several
    worker processes, the merged values of them all."""
    if _multiproc_dir is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=_multiproc_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
