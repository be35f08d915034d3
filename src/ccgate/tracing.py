"""Optional OpenTelemetry spans: a request, its admission, its job's queue wait, run and settle.

Tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the ``[otel]`` extra is
installed; otherwise every helper here does nothing. Each request starts a trace of its own
(an incoming ``traceparent`` is not trusted: clients would choose their request ids), and the
request id a client gets is ``req_`` plus that trace's id. A job keeps its trace context in its
stored request, so the node that runs it, maybe another one, continues the same trace.

Spans carry ids, routes, doors, models and statuses: never a prompt, an answer or a key.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import structlog

from ccgate import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = structlog.get_logger("ccgate.tracing")

# The key under which a job's stored request keeps the W3C traceparent of its request.
TRACEPARENT = "traceparent"
# Spans reach the collector within about this long (the SDK's default is 5 s).
_EXPORT_DELAY_MS = 1000
AttributeValue = str | int | float | bool


class _State:
    """The process's tracer, None while tracing is off (reset with ``use_provider(None)``)."""

    tracer: Tracer | None = None
    provider: TracerProvider | None = None


def enabled() -> bool:
    """Whether spans are recorded."""
    return _State.tracer is not None


def configure_tracing(endpoint: str | None) -> bool:
    """Export spans over OTLP/HTTP to ``endpoint`` (``<endpoint>/v1/traces``); return whether
    tracing is on. Without the ``[otel]`` extra it stays off and says so once."""
    if not endpoint:
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "tracing_unavailable",
            detail="OTEL_EXPORTER_OTLP_ENDPOINT is set but the "
            "OpenTelemetry packages are missing: pip install 'ccgate[otel]'",
        )
        return False
    provider = new_provider()
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"),
            schedule_delay_millis=_EXPORT_DELAY_MS,
        )
    )
    use_provider(provider)
    log.info("tracing_on", endpoint=endpoint)
    return True


def new_provider() -> TracerProvider:
    """A tracer provider naming the service ``ccgate``, with trace ids from ``secrets``
    (they become request ids, which must not be guessable)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.id_generator import IdGenerator

    class SecretIds(IdGenerator):
        def generate_span_id(self) -> int:
            return secrets.randbits(64) or 1

        def generate_trace_id(self) -> int:
            return secrets.randbits(128) or 1

        def is_trace_id_random(self) -> bool:
            return True

    resource = Resource.create({"service.name": "ccgate", "service.version": __version__})
    return TracerProvider(resource=resource, id_generator=SecretIds())


def use_provider(provider: TracerProvider | None) -> None:
    """Record spans through ``provider`` (tests pass one with an in-memory exporter);
    None turns tracing off."""
    _State.provider = provider
    _State.tracer = provider.get_tracer("ccgate", __version__) if provider else None


def shutdown_tracing() -> None:
    """Send the spans still buffered and turn tracing off."""
    provider = _State.provider
    use_provider(None)
    if provider is not None:
        provider.shutdown()


def start_request(method: str) -> tuple[Span | None, str]:
    """A new trace's root span for one HTTP request (not yet current) and the 32 hex digits
    of its trace id; with tracing off, no span and 32 random hex digits."""
    tracer = _State.tracer
    if tracer is None:
        return None, secrets.token_hex(16)
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind, format_trace_id

    span = tracer.start_span(
        method, context=Context(), kind=SpanKind.SERVER, attributes={"http.request.method": method}
    )
    return span, format_trace_id(span.get_span_context().trace_id)


@contextlib.contextmanager
def current(span: Span | None) -> Iterator[None]:
    """Make ``span`` the parent of the spans started inside the block (it is not ended)."""
    if span is None:
        yield
        return
    from opentelemetry.trace import use_span

    with use_span(span, end_on_exit=False):
        yield


def end_request(span: Span | None, method: str, route: str, status: int, request_id: str) -> None:
    """Name the request's span after its route, note its status and end it."""
    if span is None:
        return
    from opentelemetry.trace import StatusCode

    span.update_name(f"{method} {route}")
    span.set_attributes(
        {"http.route": route, "http.response.status_code": status, "ccgate.request_id": request_id}
    )
    if status >= 500:
        span.set_status(StatusCode.ERROR)
    span.end()


@contextlib.contextmanager
def span(name: str, **attributes: AttributeValue | None) -> Iterator[None]:
    """A child span of the current one around the block; an exception marks it failed."""
    tracer = _State.tracer
    if tracer is None:
        yield
        return
    with tracer.start_as_current_span(name, attributes=_present(attributes)):
        yield


def add_attributes(**attributes: AttributeValue | None) -> None:
    """Note facts on the current span (e.g. how a run ended)."""
    if _State.tracer is None:
        return
    from opentelemetry.trace import get_current_span

    get_current_span().set_attributes(_present(attributes))


def span_since(name: str, started_ns: int, **attributes: AttributeValue | None) -> None:
    """Record a finished child span of the current one, from ``started_ns`` (``time.time_ns``
    clock) to now: the queue wait, the wait for the first token."""
    tracer = _State.tracer
    if tracer is None:
        return
    now = time.time_ns()
    child = tracer.start_span(
        name, start_time=min(started_ns, now), attributes=_present(attributes)
    )
    child.end(end_time=now)


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, to store with a job; None when off."""
    if _State.tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get(TRACEPARENT)


def trace_id_of(parent: object) -> str | None:
    """The trace id (32 hex digits) in a stored ``traceparent``, or None."""
    if not isinstance(parent, str):
        return None
    parts = parent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


@contextlib.contextmanager
def continued(parent: object) -> Iterator[None]:
    """Continue the trace of a stored ``traceparent`` inside the block (a job's run)."""
    if _State.tracer is None or not isinstance(parent, str):
        yield
        return
    from opentelemetry import context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    token = context.attach(TraceContextTextMapPropagator().extract({TRACEPARENT: parent}))
    try:
        yield
    finally:
        context.detach(token)


def _present(attributes: dict[str, AttributeValue | None]) -> dict[str, AttributeValue]:
    return {f"ccgate.{key}": value for key, value in attributes.items() if value is not None}
