"""Whatever lands on the socket, the server stays up and the next normal request answers."""

from __future__ import annotations

import json
import random
import re
import socket
import time
from collections.abc import Callable

import httpx
import pytest

from tests.reliability.gate import Gate, wait_until

_READ_SECS = 5.0
_QUIET_SECS = 0.3
_SEED = 1122


def _request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


def _run_request(key: str, prompt: str = "hello") -> bytes:
    body = json.dumps({"prompt": prompt}).encode()
    return _request(
        "POST",
        "/api/v1/run",
        {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
        },
        body,
    )


def _upload_request(key: str) -> bytes:
    body = (
        b"--b\r\nContent-Disposition: form-data; name=file; filename=a.txt\r\n"
        b"Content-Type: text/plain\r\n\r\n" + b"x" * 5000 + b"\r\n--b--\r\n"
    )
    return _request(
        "POST",
        "/api/v1/files",
        {
            "Authorization": f"Bearer {key}",
            "Content-Type": "multipart/form-data; boundary=b",
            "Content-Length": str(len(body)),
        },
        body,
    )


def _messages_request(key: str) -> bytes:
    body = json.dumps(
        {"model": "sonnet", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    return _request(
        "POST",
        "/v1/messages",
        {"x-api-key": key, "Content-Type": "application/json", "Content-Length": str(len(body))},
        body,
    )


def _random_blobs(count: int) -> list[bytes]:
    rng = random.Random(_SEED)  # noqa: S311 - reproducible garbage, not a secret
    return [rng.randbytes(rng.randint(1, 65536)) for _ in range(count)]


def _payloads(key: str) -> dict[str, list[bytes]]:
    """Named pieces of hostile traffic; each list is sent in order on one connection."""
    run = _run_request(key)
    half = run[: len(run) - 10]
    return {
        **{f"random-bytes-{n}": [blob] for n, blob in enumerate(_random_blobs(4))},
        "random-bytes-after-request-line": [b"GET /health HTTP/1.1\r\n" + _random_blobs(1)[0]],
        "half-request-line": [b"GET /hea"],
        "half-headers": [run[: run.index(b"\r\n\r\n") // 2]],
        "half-body": [half],
        "half-upload": [_upload_request(key)[:-2000]],
        "half-messages-body": [_messages_request(key)[:-20]],
        "body-shorter-than-content-length": [
            run.replace(b"Content-Length: ", b"Content-Length: 9")
        ],
        "huge-header-value": [_request("GET", "/health", {"X-Huge": "a" * 1_000_000})],
        "many-headers": [_request("GET", "/health", {f"X-H{n}": "v" for n in range(20_000)})],
        "huge-request-line": [_request("GET", "/health?" + "q" * 1_000_000, {})],
        "huge-authorization": [
            _request("GET", "/api/v1/jobs", {"Authorization": "Bearer " + "x" * 500_000})
        ],
        "invalid-method": [_request("BR3W", "/health", {})],
        "lowercase-method": [_request("get", "/health", {})],
        "method-with-junk": [_request("G\x00ET", "/health", {})],
        "connect-method": [_request("CONNECT", "127.0.0.1:443", {})],
        "unknown-http-version": [b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n"],
        "http-0.9": [b"GET /health\r\n\r\n"],
        "no-host": [b"GET /health HTTP/1.1\r\n\r\n"],
        "bare-lf": [b"GET /health HTTP/1.1\nHost: x\n\n"],
        "nul-in-path": [b"GET /he\x00alth HTTP/1.1\r\nHost: x\r\n\r\n"],
        "absolute-form-to-elsewhere": [b"GET http://example.invalid/ HTTP/1.1\r\nHost: x\r\n\r\n"],
        "negative-content-length": [_request("POST", "/api/v1/run", {"Content-Length": "-5"})],
        "huge-content-length": [
            _request(
                "POST",
                "/api/v1/run",
                {"Authorization": f"Bearer {key}", "Content-Length": "9" * 40},
                b"{}",
            )
        ],
        "two-content-lengths": [
            _request("POST", "/api/v1/run", {"Content-Length": "2", "content-length": "3"}, b"{}")
        ],
        "chunked-garbage": [
            _request(
                "POST",
                "/api/v1/run",
                {
                    "Authorization": f"Bearer {key}",
                    "Transfer-Encoding": "chunked",
                    "Content-Type": "application/json",
                },
                b"zz\r\n{}\r\n0\r\n\r\n",
            )
        ],
        "chunked-and-content-length": [
            _request(
                "POST",
                "/api/v1/run",
                {
                    "Authorization": f"Bearer {key}",
                    "Transfer-Encoding": "chunked",
                    "Content-Length": "4",
                },
                b"2\r\n{}\r\n0\r\n\r\n",
            )
        ],
        "chunked-then-close": [
            _request(
                "POST",
                "/api/v1/run",
                {
                    "Authorization": f"Bearer {key}",
                    "Transfer-Encoding": "chunked",
                    "Content-Type": "application/json",
                },
                b'5\r\n{"pro',
            )
        ],
        "pipelined-junk": [_run_request(key) + b"\x00\xff junk \r\n\r\n" + _run_request(key)],
        "pipelined-many": [b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 200],
        "pipelined-half": [b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /heal"],
        "upgrade-websocket": [
            _request(
                "GET",
                "/health",
                {
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Key": "x",
                    "Sec-WebSocket-Version": "13",
                },
            )
        ],
        "h2-preface": [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(64)],
        "tls-client-hello": [bytes.fromhex("16030100a1010000") + _random_blobs(1)[0][:160]],
        "slowloris": [bytes([byte]) for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: "],
    }


def _send(gate: Gate, pieces: list[bytes], slow: bool) -> bytes:
    """Send `pieces` on one fresh connection, read what comes back for a moment, close."""
    received = b""
    with socket.create_connection(("127.0.0.1", gate.server.port), timeout=_READ_SECS) as sock:
        for piece in pieces:
            try:
                sock.sendall(piece)
            except OSError:
                break
            if slow:
                time.sleep(0.05)
        # Read until the server closes or stays quiet for a moment, then hang up on it.
        deadline = time.monotonic() + _READ_SECS
        sock.settimeout(_QUIET_SECS)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            received += chunk
    return received


@pytest.fixture(scope="module")
def gate(start_gate: Callable[..., Gate]) -> Gate:
    """One server that takes every kind of garbage in turn."""
    return start_gate()


def _statuses(raw: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", raw)]


@pytest.mark.parametrize("name", sorted(_payloads("ccg_x")))
def test_socket_garbage_leaves_server_answering(gate: Gate, name: str) -> None:
    """After hostile bytes on a raw connection the server runs, has logged no error, answers
    no 5xx, and a keyed run right after answers 200."""
    errors_before = gate.error_lines()
    raw = _send(gate, _payloads(gate.api_key)[name], slow=name == "slowloris")
    assert all(status < 500 for status in _statuses(raw)), raw[:500]
    assert gate.is_alive(), gate.server.log_text()[-3000:]
    answer = httpx.post(
        f"{gate.url}/api/v1/run",
        json={"prompt": "still there?"},
        headers={"Authorization": f"Bearer {gate.api_key}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert gate.error_lines()[len(errors_before) :] == []


def test_socket_garbage_body_cut_short_is_logged_as_client_closed(gate: Gate) -> None:
    """A client that hangs up halfway through its body is logged as 499, not as an error."""
    errors_before = gate.error_lines()
    closed_before = gate.server.log_text().count('"status": 499')
    _send(gate, [_run_request(gate.api_key, "cut short")[:-5]], slow=False)
    assert wait_until(
        lambda: gate.server.log_text().count('"status": 499') > closed_before, timeout=5
    )
    assert '"status": 500' not in gate.server.log_text()
    assert gate.error_lines()[len(errors_before) :] == []
