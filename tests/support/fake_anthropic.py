"""A fake Anthropic Messages API server for tests and benchmarks.

It speaks just enough of the real wire protocol (SSE event sequence, error
envelope, count_tokens) for the real `claude` CLI and the `anthropic` SDK to
run against it offline. The server side is standard library only so it starts
in milliseconds and has no event loop of its own to interfere with the tests'.

Usage in a test::

    with FakeAnthropic() as fake:
        fake.reply(Text("hi there"))
        ...  # point ANTHROPIC_BASE_URL at fake.url
        assert fake.message_requests()[0].body["stream"] is True

Manual runs and benchmarks::

    python -m tests.support.fake_anthropic --port 18999 --text "hi" --delay 0.05
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "Behavior",
    "Echo",
    "Error",
    "FakeAnthropic",
    "Hang",
    "RecordedRequest",
    "Slow",
    "StreamError",
    "Text",
    "TextAndTools",
    "ToolUse",
    "cli_env",
]

FAKE_API_KEY = "sk-ant-test-not-a-real-key"

_MESSAGES_PATH = "/v1/messages"
_COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
_JOIN_TIMEOUT = 2.0
_ids = itertools.count(1)


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request the fake received, as the tests want to inspect it."""

    path: str
    headers: dict[str, str]
    body: Any
    method: str = "POST"
    # The client's source port: equal ports mean a reused keep-alive connection.
    client_port: int = 0


@dataclass(frozen=True)
class Text:
    """A normal streamed text reply (or a JSON message when `stream` is false)."""

    text: str
    chunks: int | None = None
    delay: float = 0.0
    usage_in: int = 12
    usage_out: int | None = None


@dataclass(frozen=True)
class Slow:
    """A text reply with a pause before every delta, for cancel and timeout tests."""

    text: str
    delay: float = 0.5
    chunks: int | None = None

    def as_text(self) -> Text:
        """Return the equivalent `Text` behaviour."""
        return Text(self.text, chunks=self.chunks, delay=self.delay)


@dataclass(frozen=True)
class Echo:
    """Reply with the last text block of the last user turn, stripped."""

    delay: float = 0.0


@dataclass(frozen=True)
class Error:
    """An API error response with the real error envelope."""

    status: int
    error_type: str = "api_error"
    message: str = "boom"
    retry_after: int | None = None
    # Extra response headers, e.g. anthropic-ratelimit-*-reset on a 429.
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolUse:
    """A streamed reply whose only content block is a tool_use call."""

    name: str
    input: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TextAndTools:
    """A reply with a text block, then one tool_use block per call (stop_reason tool_use);
    streamed, each call's input comes as ``parts`` input_json_delta pieces."""

    text: str
    calls: tuple[ToolUse, ...]
    parts: int = 3


@dataclass(frozen=True)
class Hang:
    """Send headers and message_start, then nothing until the server stops."""


@dataclass(frozen=True)
class StreamError:
    """A 200 stream that sends ``text``, then an ``event: error`` instead of finishing."""

    text: str = ""
    error_type: str = "overloaded_error"
    message: str = "Overloaded"


Behavior = Text | Slow | Echo | Error | ToolUse | TextAndTools | Hang | StreamError


class _ClientGone(Exception):
    """The client closed the connection, or the server is stopping."""


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its FakeAnthropic and its open connections."""

    daemon_threads = True
    request_queue_size = 256  # the default 5 resets connections when many clients connect
    # Handler threads are joined by FakeAnthropic.stop() with a timeout instead,
    # so a misbehaving client can never wedge a test's teardown.
    block_on_close = False

    def __init__(self, address: tuple[str, int], fake: FakeAnthropic) -> None:
        self.fake = fake
        self.connections: dict[socket.socket, threading.Thread] = {}
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that vanish mid-request; print anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Dispatches each request to the behaviour FakeAnthropic picks for it."""

    protocol_version = "HTTP/1.1"
    # Without TCP_NODELAY every small answer waits ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: test output should only show what tests print."""

    def setup(self) -> None:
        """Register the connection so stop() can unblock it."""
        super().setup()
        with self.server.connections_lock:
            self.server.connections[self.connection] = threading.current_thread()

    def finish(self) -> None:
        """Unregister the connection."""
        try:
            super().finish()
        except OSError:
            pass
        finally:
            with self.server.connections_lock:
                self.server.connections.pop(self.connection, None)

    def do_POST(self) -> None:
        """Handle POST requests."""
        self._dispatch()

    def do_GET(self) -> None:
        """Handle GET requests (all of them are unknown paths)."""
        self._dispatch()

    def do_PUT(self) -> None:
        """Handle PUT requests (all of them are unknown paths)."""
        self._dispatch()

    def do_DELETE(self) -> None:
        """Handle DELETE requests (all of them are unknown paths)."""
        self._dispatch()

    def _dispatch(self) -> None:
        fake = self.server.fake
        raw = self._read_body()
        body: Any
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = urlsplit(self.path).path.rstrip("/") or "/"
        fake._record(
            RecordedRequest(
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                method=self.command,
                client_port=self.client_address[1],
            )
        )
        try:
            if self.command == "POST" and path == _COUNT_TOKENS_PATH:
                self._send_json(200, {"input_tokens": _estimate_tokens(raw)})
            elif self.command == "POST" and path == _MESSAGES_PATH:
                if not isinstance(body, dict):
                    self._send_error(Error(400, "invalid_request_error", "body must be JSON"))
                else:
                    self._respond(fake._next_behavior(), body)
            else:
                self._send_error(Error(404, "not_found_error", f"Not found: {self.path}"))
        except _ClientGone:
            self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _respond(self, behavior: Behavior, body: dict[str, Any]) -> None:
        model = str(body.get("model") or "claude-fake")
        stream = body.get("stream") is True
        match behavior:
            case Error():
                self._send_error(behavior)
            case Slow():
                self._respond(behavior.as_text(), body)
            case Echo():
                reply = Text(_last_user_text(body), delay=behavior.delay)
                self._respond(reply, body)
            case Text() if stream:
                self._stream_text(model, behavior)
            case Text():
                # A non-streamed answer waits its delay once, as if generating.
                self._pause(behavior.delay)
                self._send_json(200, _message_json(model, behavior))
            case ToolUse() if stream:
                self._stream_tool_use(model, behavior)
            case ToolUse():
                self._send_json(200, _tool_use_json(model, behavior))
            case TextAndTools() if stream:
                self._stream_text_and_tools(model, behavior)
            case TextAndTools():
                self._send_json(200, _text_and_tools_json(model, behavior))
            case Hang():
                self._hang(model, stream)
            case StreamError() if stream:
                self._stream_error(model, behavior)
            case StreamError():
                self._send_error(Error(500, behavior.error_type, behavior.message))

    # -- plain JSON responses -------------------------------------------------

    def _send_json(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_fake_{next(_ids):06d}")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self._write(data)

    def _send_error(self, error: Error) -> None:
        extra = {} if error.retry_after is None else {"retry-after": str(error.retry_after)}
        extra.update(error.headers)
        payload = {"type": "error", "error": {"type": error.error_type, "message": error.message}}
        self._send_json(error.status, payload, extra)

    # -- streaming responses --------------------------------------------------

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        # Chunked encoding like the real API, so keep-alive clients can reuse
        # the connection after message_stop.
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", f"req_fake_{next(_ids):06d}")
        self.end_headers()
        self._flush()

    def _event(self, data: dict[str, Any]) -> None:
        # The real API names every SSE event after its payload's "type".
        frame = f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()
        self._write(b"%x\r\n%s\r\n" % (len(frame), frame))
        self._flush()

    def _block_start(self, block: dict[str, Any]) -> None:
        self._event({"type": "content_block_start", "index": 0, "content_block": block})

    def _block_delta(self, delta: dict[str, Any]) -> None:
        self._event({"type": "content_block_delta", "index": 0, "delta": delta})

    def _end_stream(self) -> None:
        self._write(b"0\r\n\r\n")
        self._flush()

    def _pause(self, seconds: float) -> None:
        if seconds > 0 and self.server.fake._stopping.wait(seconds):
            raise _ClientGone

    def _stream_text(self, model: str, text: Text) -> None:
        pieces = _split_text(text.text, text.chunks)
        usage_out = text.usage_out if text.usage_out is not None else max(1, len(pieces))
        self._start_stream()
        self._event(_message_start(model, text.usage_in))
        self._block_start({"type": "text", "text": ""})
        self._event({"type": "ping"})
        for i, piece in enumerate(pieces):
            if i:
                self._pause(text.delay)
            self._block_delta({"type": "text_delta", "text": piece})
        self._finish_message("end_turn", usage_out)

    def _stream_tool_use(self, model: str, tool: ToolUse) -> None:
        self._start_stream()
        self._event(_message_start(model, 12))
        self._block_start({"type": "tool_use", "id": _tool_id(), "name": tool.name, "input": {}})
        encoded = json.dumps(tool.input)
        step = max(1, len(encoded) // 3)
        for start in range(0, len(encoded), step):
            partial = encoded[start : start + step]
            self._block_delta({"type": "input_json_delta", "partial_json": partial})
        self._finish_message("tool_use", 20)

    def _stream_text_and_tools(self, model: str, reply: TextAndTools) -> None:
        self._start_stream()
        self._event(_message_start(model, 12))
        self._event(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }
        )
        for piece in _split_text(reply.text, None):
            self._block_delta({"type": "text_delta", "text": piece})
        self._event({"type": "content_block_stop", "index": 0})
        for index, call in enumerate(reply.calls, start=1):
            block = {"type": "tool_use", "id": _tool_id(), "name": call.name, "input": {}}
            self._event({"type": "content_block_start", "index": index, "content_block": block})
            self._event({"type": "ping"})
            for partial in _split_text(json.dumps(call.input), reply.parts):
                self._event(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": partial},
                    }
                )
            self._event({"type": "content_block_stop", "index": index})
        delta = {"stop_reason": "tool_use", "stop_sequence": None}
        self._event({"type": "message_delta", "delta": delta, "usage": {"output_tokens": 30}})
        self._event({"type": "message_stop"})
        self._end_stream()

    def _finish_message(self, stop_reason: str, usage_out: int) -> None:
        self._event({"type": "content_block_stop", "index": 0})
        delta = {"stop_reason": stop_reason, "stop_sequence": None}
        usage = {"output_tokens": usage_out}
        self._event({"type": "message_delta", "delta": delta, "usage": usage})
        self._event({"type": "message_stop"})
        self._end_stream()

    def _stream_error(self, model: str, failure: StreamError) -> None:
        self._start_stream()
        self._event(_message_start(model, 12))
        self._block_start({"type": "text", "text": ""})
        for piece in _split_text(failure.text, None):
            self._block_delta({"type": "text_delta", "text": piece})
        error = {"type": failure.error_type, "message": failure.message}
        self._event({"type": "error", "error": error})
        self._end_stream()

    def _hang(self, model: str, stream: bool) -> None:
        if stream:
            self._start_stream()
            self._event(_message_start(model, 12))
        self.server.fake._stopping.wait()
        raise _ClientGone

    # -- low-level writes -----------------------------------------------------

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
        except OSError as exc:
            raise _ClientGone from exc

    def _flush(self) -> None:
        try:
            self.wfile.flush()
        except OSError as exc:
            raise _ClientGone from exc


class FakeAnthropic:
    """A local Anthropic Messages API stand-in running on a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Prepare the server; nothing listens until `start()`."""
        self.host = host
        self.port = port
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.default: Behavior = Text("Hello from fake")
        self._queue: deque[Behavior] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeAnthropic:
        """Bind, start serving on a daemon thread and return self."""
        if self._server is not None:
            raise RuntimeError("FakeAnthropic is already running")
        self._stopping.clear()
        server = _Server((self.host, self.port), self)
        self._server = server
        self.port = server.server_address[1]
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-anthropic-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release hanging handlers and close every socket."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown()
        thread.join(_JOIN_TIMEOUT)
        with server.connections_lock:
            open_connections = list(server.connections.items())
        for conn, _ in open_connections:
            # Handlers idle on a keep-alive socket block in readline(); shutting
            # the socket down wakes them up so their threads can finish.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for _, handler_thread in open_connections:
            handler_thread.join(_JOIN_TIMEOUT)
        server.server_close()
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeAnthropic:
        """Start the server for a `with` block."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server at the end of a `with` block."""
        self.stop()

    def reply(self, behavior: Behavior) -> None:
        """Queue a one-shot behaviour for the next /v1/messages request (FIFO)."""
        with self._lock:
            self._queue.append(behavior)

    def message_requests(self) -> list[RecordedRequest]:
        """Return the POST /v1/messages requests received so far (not count_tokens)."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == "POST"
                and (urlsplit(r.path).path.rstrip("/") or "/") == _MESSAGES_PATH
            ]

    def reset(self) -> None:
        """Forget queued behaviours and recorded requests."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _next_behavior(self) -> Behavior:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default


def cli_env(fake: FakeAnthropic, home: Path, *, max_retries: int = 0) -> dict[str, str]:
    """Return the environment that runs the real `claude` CLI offline against `fake`.

    Beyond the basics, two settings keep tests fast and tidy: the real CLI
    retries every upstream error (401 included) up to 10 times with backoff
    unless CLAUDE_CODE_MAX_RETRIES says otherwise, and it drops scratch
    directories (claude-<uid>/, cc-socks/) into $TMPDIR, which is pointed
    into `home` here.
    """
    return {
        "ANTHROPIC_BASE_URL": fake.url,
        "ANTHROPIC_API_KEY": FAKE_API_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_RETRIES": str(max_retries),
        "HOME": str(home),
        "TMPDIR": str(home),
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
    }


# -- response bodies ----------------------------------------------------------


def _message_id() -> str:
    return f"msg_fake_{next(_ids):06d}"


def _tool_id() -> str:
    return f"toolu_fake_{next(_ids):06d}"


def _message_start(model: str, usage_in: int) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": _message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": usage_in, "output_tokens": 1},
    }
    return {"type": "message_start", "message": message}


def _message_json(model: str, text: Text) -> dict[str, Any]:
    pieces = _split_text(text.text, text.chunks)
    usage_out = text.usage_out if text.usage_out is not None else max(1, len(pieces))
    return {
        "id": _message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text.text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": text.usage_in, "output_tokens": usage_out},
    }


def _tool_use_json(model: str, tool: ToolUse) -> dict[str, Any]:
    return {
        "id": _message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "tool_use", "id": _tool_id(), "name": tool.name, "input": tool.input}],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 20},
    }


def _text_and_tools_json(model: str, reply: TextAndTools) -> dict[str, Any]:
    calls = [
        {"type": "tool_use", "id": _tool_id(), "name": call.name, "input": call.input}
        for call in reply.calls
    ]
    message: dict[str, Any] = _tool_use_json(model, ToolUse("unused"))
    message["content"] = [{"type": "text", "text": reply.text}, *calls]
    message["usage"]["output_tokens"] = 30
    return message


def _split_text(text: str, chunks: int | None) -> list[str]:
    """Split text into delta pieces: by words, or into `chunks` near-equal parts."""
    if not text:
        return []
    if chunks is None:
        # Leading whitespace stays with its word (" from"), as the real API does.
        pieces = re.findall(r"\s*\S+", text)
        tail = text[sum(len(p) for p in pieces) :]
        if tail:
            if pieces:
                pieces[-1] += tail
            else:
                pieces = [tail]
        return pieces
    count = max(1, min(chunks, len(text)))
    size, extra = divmod(len(text), count)
    out: list[str] = []
    start = 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        out.append(text[start:end])
        start = end
    return out


def _last_user_text(body: dict[str, Any]) -> str:
    """Return the last text block of the last user turn, stripped ('' if none)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content.strip()
        if isinstance(content, list):
            for block in reversed(content):
                if isinstance(block, dict) and block.get("type") == "text":
                    return str(block.get("text", "")).strip()
        return ""
    return ""


def _estimate_tokens(raw: bytes) -> int:
    """A rough token count: about four bytes of request per token."""
    return max(1, len(raw) // 4)


def main(argv: list[str] | None = None) -> None:
    """Run a FakeAnthropic in the foreground until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.fake_anthropic")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--text", default="Hello from fake", help="reply text")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between deltas")
    parser.add_argument("--chunks", type=int, default=None, help="number of deltas")
    args = parser.parse_args(argv)
    fake = FakeAnthropic(args.host, args.port)
    fake.default = Text(args.text, chunks=args.chunks, delay=args.delay)
    done = threading.Event()
    # Explicit handlers: a backgrounded process (`cmd &` in a script) starts with
    # SIGINT ignored, and SIGTERM should also stop cleanly for benchmarks.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with fake:
        print(f"fake Anthropic API listening on {fake.url}", flush=True)
        while not done.wait(0.5):
            pass


if __name__ == "__main__":
    main()
