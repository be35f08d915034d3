"""Traces and log lines of a real `ccgate serve` running the real CLI.

Spans go over OTLP/HTTP to a small receiver on 127.0.0.1 started here; log lines are read
from a file, and from a pseudo-terminal for the `auto` format.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.e2e.conftest import HTTP_TIMEOUT_SECS, StartServer, wait_until
from tests.support.server import ServerProcess, free_port

PROMPT = "the observability secret prompt"


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1 keeping every span it gets."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                receiver.spans.extend(
                    span
                    for resource in request.resource_spans
                    for scope in resource.scope_spans
                    for span in scope.spans
                )
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def names(self) -> dict[str, Any]:
        """The spans received so far, by name."""
        return {span.name: span for span in self.spans}


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    """A running OTLP/HTTP receiver."""
    receiver = OtlpReceiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def _run(server: ServerProcess, key: str) -> httpx.Response:
    with httpx.Client(
        base_url=server.url, timeout=HTTP_TIMEOUT_SECS, headers={"Authorization": f"Bearer {key}"}
    ) as http:
        return http.post("/api/v1/run", json={"prompt": PROMPT})


@pytest.mark.real_cli
def test_tracing_spans_reach_the_collector_in_one_trace_per_request(
    start_server: StartServer, server_env: dict[str, str], otlp: OtlpReceiver
) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, a run's spans reach the collector with the
    request as root, the job's steps below it, spawn and first token below the run, and
    the trace id is the client's request id; the JSON log line carries the same id."""
    server = start_server(server_env, OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url)
    response = _run(server, server.create_key("e2e"))
    assert response.status_code == 200, response.text

    assert wait_until(lambda: "ccgate.settle" in otlp.names(), 15), otlp.names().keys()
    spans = otlp.names()
    root = spans["POST /api/v1/run"]
    assert response.headers["request-id"] == "req_" + root.trace_id.hex()
    by_id = {span.span_id: name for name, span in spans.items()}
    parents = {name: by_id.get(span.parent_span_id) for name, span in spans.items()}
    assert parents["POST /api/v1/run"] is None
    for step in ("ccgate.admission", "ccgate.queue", "ccgate.run", "ccgate.settle"):
        assert parents[step] == "POST /api/v1/run", step
    assert parents["ccgate.spawn"] == parents["ccgate.first_token"] == "ccgate.run"
    assert {name for name, span in spans.items() if span.trace_id == root.trace_id} == {
        "POST /api/v1/run",
        "ccgate.admission",
        "ccgate.queue",
        "ccgate.run",
        "ccgate.spawn",
        "ccgate.first_token",
        "ccgate.settle",
    }

    def run_lines() -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for line in server.log_text().splitlines()
            if '"event": "request"' in line and "/api/v1/run" in line
        ]

    assert wait_until(lambda: bool(run_lines()), 10), server.log_text()
    [line] = run_lines()
    assert line["trace_id"] == root.trace_id.hex()
    assert PROMPT not in repr(otlp.spans) and PROMPT not in server.log_text()


@pytest.mark.real_cli
def test_logs_console_format_is_readable_and_holds_no_prompt_or_key(
    start_server: StartServer, server_env: dict[str, str]
) -> None:
    """CCGATE_LOG_FORMAT=console writes readable key=value lines, without the prompt or
    the key, even into a file."""
    server = start_server(server_env, CCGATE_LOG_FORMAT="console")
    key = server.create_key("e2e")
    response = _run(server, key)
    assert response.status_code == 200, response.text

    def run_lines() -> list[str]:
        return [
            line
            for line in server.log_text().splitlines()
            if " request " in line and "/api/v1/run" in line
        ]

    assert wait_until(lambda: bool(run_lines()), 10), server.log_text()
    [line], log = run_lines(), server.log_text()
    assert not line.startswith("{")
    assert f"request_id={response.headers['request-id']}" in line
    assert "status=200" in line and "\x1b[" not in line
    assert PROMPT not in log and key not in log


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            with contextlib.suppress(OSError):
                seen += os.read(fd, 65536)
    return seen


@pytest.mark.real_cli
def test_logs_auto_on_a_terminal_is_coloured_console_lines(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    """With the default `auto`, a server whose stderr is a terminal writes coloured
    console lines, not JSON, and still no prompt."""
    controller, terminal = pty.openpty()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ccgate", "serve", "--port", str(port)],
        cwd=tmp_path,
        env={"PYTHONUNBUFFERED": "1", **server_env},
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    try:
        started = _read_until(controller, b"starting", 20)
        key = ServerProcess(server_env, tmp_path).create_key("e2e")
        server = ServerProcess(server_env, tmp_path)
        server.url = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: _healthy(server.url), 20)
        response = _run(server, key)
        seen = started + _read_until(controller, b"/api/v1/run", 20)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        os.close(controller)

    assert response.status_code == 200, response.text
    text = seen.decode(errors="replace")
    assert "\x1b[" in text
    assert not any(line.lstrip().startswith("{") for line in text.splitlines())
    assert PROMPT not in text and key not in text


def _healthy(url: str) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    return False
