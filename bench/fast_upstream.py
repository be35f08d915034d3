"""A fast fake Anthropic Messages API for the API-path benchmarks: canned answers, no checks.

The project's fake (``tests/support/fake_anthropic.py``) is a threaded ``http.server``: faithful
but ~0.2 ms of CPU per request, on the same two cores as the gateway and the load generator.
This one is an asyncio protocol answering every ``POST /v1/messages``
with prebuilt bytes (a JSON message, or the SSE event sequence when the body asks for
``"stream": true``), so the upstream's share of the machine stays small at any concurrency.

    .venv/bin/python -m bench.fast_upstream --port 18999
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Mapping

_MODEL = "claude-sonnet-4-5"


def _message(text: str) -> bytes:
    return json.dumps(
        {
            "id": "msg_bench",
            "type": "message",
            "role": "assistant",
            "model": _MODEL,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 3},
        },
        separators=(",", ":"),
    ).encode()


def _events(text: str) -> bytes:
    def event(name: str, data: Mapping[str, object]) -> str:
        return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"

    start = {
        "type": "message_start",
        "message": {
            "id": "msg_bench",
            "type": "message",
            "role": "assistant",
            "model": _MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 1},
        },
    }
    return "".join(
        [
            event("message_start", start),
            event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": text},
                },
            ),
            event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 3},
                },
            ),
            event("message_stop", {"type": "message_stop"}),
        ]
    ).encode()


def answers(text: str) -> tuple[bytes, bytes]:
    """The whole HTTP responses: (non-streamed, streamed as one chunked body)."""
    body = _message(text)
    plain = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nrequest-id: req_bench\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    events = _events(text)
    streamed = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nrequest-id: req_bench\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
        + f"{len(events):x}\r\n".encode()
        + events
        + b"\r\n0\r\n\r\n"
    )
    return plain, streamed


class _Upstream(asyncio.Protocol):
    """One keep-alive connection: reads whole requests, writes the canned answer."""

    def __init__(self, plain: bytes, streamed: bytes) -> None:
        self._plain, self._streamed = plain, streamed
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end].lower()
            at = head.find(b"content-length:")
            stop = head.find(b"\r\n", at)
            length = int(head[at + 15 : stop if stop >= 0 else len(head)]) if at >= 0 else 0
            if len(self._buffer) < end + 4 + length:
                return
            body = self._buffer[end + 4 : end + 4 + length]
            self._buffer = self._buffer[end + 4 + length :]
            streamed = b'"stream":true' in body or b'"stream": true' in body
            assert self._transport is not None
            self._transport.write(self._streamed if streamed else self._plain)


async def serve(port: int, text: str) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
    plain, streamed = answers(text)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Upstream(plain, streamed), "127.0.0.1", port, backlog=1024
    )
    done = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, done.set)
    async with server:
        await done.wait()


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--text", default="hi")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.text))


if __name__ == "__main__":
    main()
