"""Streamed answers of the Anthropic door as uvicorn's cycle writes them: the head with the
first events, and a client that hangs up on an idle pass-through stream."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from ccgate.api.deps import app_services
from ccgate.api.doors.messages import _MessageStream, sse
from ccgate.http_protocol import HeldWrites, coalesce
from ccgate.policy import KeyPolicy
from tests.integration.conftest import Gateway
from tests.support.fake_anthropic import FakeAnthropic, Hang, Text
from tests.support.recording_transport import RecordingTransport, uvicorn_cycle

_BODY = {
    "model": "sonnet",
    "max_tokens": 64,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}


def _post(transport: RecordingTransport, secret: str, body: dict[str, Any]) -> RequestResponseCycle:
    """A POST /v1/messages as ccgate's uvicorn protocol runs it, its body already received."""
    raw = json.dumps(body).encode()
    scope: Any = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/messages",
        "raw_path": b"/v1/messages",
        "query_string": b"",
        "root_path": "",
        "server": ("ccgate.test", 80),
        "client": ("127.0.0.1", 5000),
        "headers": [
            (b"host", b"ccgate.test"),
            (b"authorization", f"Bearer {secret}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
        ],
    }
    cycle = uvicorn_cycle(transport, scope)
    cycle.body, cycle.more_body = bytearray(raw), False
    cycle.message_event.set()
    coalesce(cycle, HeldWrites(transport))  # type: ignore[arg-type]
    return cycle


async def test_stream_head_leaves_with_the_opening_and_the_first_text(gateway: Gateway) -> None:
    """A streamed Messages answer's first write holds the head, message_start, the text
    block's start and the first text delta: the client reads them in one segment."""
    transport = RecordingTransport()
    cycle = _post(transport, gateway.key, _BODY)
    app: Any = gateway.app
    await asyncio.wait_for(cycle.run_asgi(app), 10)
    first = transport.writes[0]
    assert first.startswith(b"HTTP/1.1 200 OK")
    for event in (b"message_start", b"content_block_start", b"content_block_delta"):
        assert b"event: " + event + b"\n" in first
    whole = b"".join(transport.writes)
    assert whole.index(b"event: message_delta") < whole.index(b"event: message_stop")
    assert whole.endswith(b"0\r\n\r\n")


async def test_stream_client_gone_from_an_idle_upstream_frees_its_slot_at_once(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """A client that hangs up while the pass-through stream waits on a silent upstream ends
    the request at once: the key's only concurrency slot is free for its next request and
    the request has its audit row."""
    services = app_services(api_gateway.app)
    secret = (await services.keyring.create("one-at-a-time", KeyPolicy(concurrency=1))).secret
    fake.reply(Hang())
    transport = RecordingTransport()
    cycle = _post(transport, secret, _BODY)
    app: Any = api_gateway.app
    serving = asyncio.create_task(cycle.run_asgi(app))
    for _ in range(500):
        if b"message_start" in b"".join(transport.writes):
            break
        await asyncio.sleep(0.01)
    assert b"message_start" in b"".join(transport.writes)
    assert not serving.done()
    cycle.disconnected = True  # what uvicorn does when the connection closes
    cycle.message_event.set()
    await asyncio.wait_for(serving, 5)

    fake.reply(Text("next"))
    again = await api_gateway.client.post(
        "/v1/messages",
        json={**_BODY, "stream": False},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert again.status_code == 200, again.text
    await services.audit.flush()
    rows = [
        row for row in await services.store.audit.recent() if row["key_name"] == "one-at-a-time"
    ]
    assert sorted(row["http_status"] for row in rows) == [200, 200]


def test_stream_text_delta_is_written_as_every_other_event() -> None:
    """A text delta's bytes are those of the generic event writer: same spacing, non-ASCII
    text as is, quotes and control characters escaped."""
    stream = _MessageStream(cast(Any, None), "claude-sonnet-4-5")
    for text in ["hi", 'a "quoted" \\ line\n\tend', "é€😀", "", "\x00\x1f</script>"]:
        assert stream.text(text) == sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            },
        )
