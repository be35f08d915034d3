"""Spans of a request and its job, recorded in-process by the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_trace_id

from ccgate import tracing
from ccgate.runners.base import RunError
from tests.integration.conftest import Gateway
from tests.support.fake_runner import FakeRunner

PROMPT = "the secret plan for tracing"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, every finished span kept in memory; off afterwards."""
    exporter = InMemorySpanExporter()
    provider = tracing.new_provider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)
    provider.shutdown()


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def _parent(spans: dict[str, ReadableSpan], name: str) -> str | None:
    parent = spans[name].parent
    by_id = {s.context.span_id: n for n, s in spans.items() if s.context is not None}
    return by_id.get(parent.span_id) if parent is not None else None


async def test_tracing_run_spans_form_one_trace_under_the_request(
    gateway: Gateway, spans: InMemorySpanExporter
) -> None:
    """A run records request → admission, queue, run (first token) and settle in one trace
    whose id is the request id the client got."""
    response = await gateway.run({"prompt": PROMPT})
    assert response.status_code == 200, response.text

    found = _by_name(spans)
    request = found["POST /api/v1/run"]
    assert request.context is not None
    assert response.headers["request-id"] == "req_" + format_trace_id(request.context.trace_id)
    assert request.parent is None
    for child in ("ccgate.admission", "ccgate.queue", "ccgate.run", "ccgate.settle"):
        assert _parent(found, child) == "POST /api/v1/run", child
    assert _parent(found, "ccgate.first_token") == "ccgate.run"
    assert {s.context.trace_id for s in found.values() if s.context} == {request.context.trace_id}


async def test_tracing_spans_hold_no_prompt_or_key(
    gateway: Gateway, spans: InMemorySpanExporter
) -> None:
    """No span name or attribute holds the prompt or the key."""
    await gateway.run({"prompt": PROMPT})

    recorded = [(s.name, dict(s.attributes or {})) for s in spans.get_finished_spans()]
    assert recorded
    assert PROMPT not in repr(recorded)
    assert gateway.key not in repr(recorded)


async def test_tracing_request_span_notes_route_and_status(
    gateway: Gateway, spans: InMemorySpanExporter
) -> None:
    """The request span is named by its route template and notes the status it answered."""
    await gateway.client.get("/api/v1/jobs/job_missing", headers=gateway.auth())

    [request] = [s for s in spans.get_finished_spans() if s.parent is None]
    assert request.name == "GET /api/v1/jobs/{job_id}"
    assert (request.attributes or {})["http.response.status_code"] == 404


async def test_tracing_job_log_lines_carry_the_trace_id(
    gateway_factory: Callable[..., Any], spans: InMemorySpanExporter
) -> None:
    """A job's log lines carry the trace id of the request that submitted it."""
    gateway: Gateway = await gateway_factory(FakeRunner(error=RunError("cli_error", "boom")))
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        response = await gateway.run({"prompt": PROMPT})

    trace_id = response.headers["request-id"].removeprefix("req_")
    [failed] = [e for e in logs if e["event"] == "job_failed"]
    assert failed["trace_id"] == trace_id


async def test_tracing_queued_job_continues_its_own_request_trace(
    gateway_factory: Callable[..., Any], spans: InMemorySpanExporter
) -> None:
    """A job that waited in the queue and was claimed later still runs in the trace of the
    request that submitted it, not in another request's."""
    runner = FakeRunner(block=True)
    gateway: Gateway = await gateway_factory(runner, CCGATE_CONCURRENCY=1)
    first = await gateway.client.post(
        "/api/v1/jobs", json={"prompt": "one"}, headers=gateway.auth()
    )
    second = await gateway.client.post(
        "/api/v1/jobs", json={"prompt": "two"}, headers=gateway.auth()
    )
    runner.released.set()
    for _ in range(100):
        if sum(s.name == "ccgate.settle" for s in spans.get_finished_spans()) == 2:
            break
        await asyncio.sleep(0.05)

    trace_of = {
        s.context.trace_id: s.attributes
        for s in spans.get_finished_spans()
        if s.name == "ccgate.queue" and s.context
    }
    assert len(trace_of) == 2, spans.get_finished_spans()
    ids = {format_trace_id(t) for t in trace_of}
    assert ids == {first.headers["request-id"][4:], second.headers["request-id"][4:]}


def test_tracing_off_request_ids_are_32_hex() -> None:
    """With tracing off a request id is still ``req_`` and 32 hex digits, and no span."""
    span, trace_id = tracing.start_request("GET")
    assert span is None
    assert len(trace_id) == 32 and int(trace_id, 16) >= 0


async def test_tracing_only_ccgate_traces_even_with_a_global_provider(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process-wide OpenTelemetry provider (an auto-instrumentation, say) gets no spans
    from the web framework: ccgate's own tracing, off here, is the only tracing."""
    exporter = InMemorySpanExporter()
    provider = tracing.new_provider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(otel_trace, "get_tracer_provider", lambda: provider)
    try:
        response = await gateway.client.get(
            "/api/v1/jobs/job_missing",
            headers={**gateway.auth(), "traceparent": f"00-{'a' * 32}-{'b' * 16}-01"},
        )
    finally:
        provider.shutdown()
    assert response.status_code == 404
    assert exporter.get_finished_spans() == ()
