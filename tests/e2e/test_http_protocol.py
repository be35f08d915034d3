"""The answer on the wire of a real `ccgate serve`: headers and body in one segment, streams
still incremental, a client that hangs up still cancels its run (ccgate/http_protocol.py)."""

from __future__ import annotations

import json
import secrets
import socket
import struct
import time
from collections.abc import Iterator, Mapping

import httpx
import pytest

from tests.support.fake_claude_factory import make_fake_claude
from tests.support.server import ServerProcess, fake_claude_env

# struct tcp_info (linux/tcp.h): tcpi_data_segs_in, segments carrying data (Linux 4.6+).
_DATA_SEGS_IN = 152


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real `ccgate serve` with the fake claude answering "hello" at once."""
    root = tmp_path_factory.mktemp("wire")
    claude = make_fake_claude(root / "fake-claude", "text")
    env = fake_claude_env(root, claude, "wire-admin-" + secrets.token_hex(16))
    with ServerProcess(env, root / "server") as started:
        yield started


@pytest.fixture(scope="module")
def key(server: ServerProcess) -> str:
    """A fresh key of the module's server."""
    return server.create_key("wire")


def _post(path: str, key: str, body: Mapping[str, object]) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def _data_segments_in(sock: socket.socket) -> int | None:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    if len(info) < _DATA_SEGS_IN + 4:
        return None
    return int(struct.unpack_from("I", info, _DATA_SEGS_IN)[0])


def test_serve_sends_a_non_streamed_answer_as_one_segment(server: ServerProcess, key: str) -> None:
    """POST /api/v1/run: the first recv holds the headers and the whole body, one TCP segment."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        before = _data_segments_in(sock)
        sock.sendall(_post("/api/v1/run", key, {"prompt": "hi"}))
        first = sock.recv(65536)
        time.sleep(0.2)  # anything sent separately would have arrived by now
        after = _data_segments_in(sock)
    head, _, body = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    assert len(body) == length and json.loads(body)["status"] == "completed"
    if before is not None and after is not None:
        assert after - before == 1


def test_serve_streams_job_events_as_they_happen(server: ServerProcess, key: str) -> None:
    """A job's SSE stream delivers its opening at once and chunks while the job still runs."""
    auth = {"Authorization": f"Bearer {key}"}
    prompt = '#fake: {"chunks": 4, "delay": 0.5}\nhi'
    with httpx.Client(base_url=server.url, headers=auth, timeout=30) as client:
        job = client.post("/api/v1/jobs", json={"prompt": prompt}).json()
        with client.stream("GET", f"/api/v1/jobs/{job['job_id']}/sse") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            assert next(lines) == ": ccgate job stream"
            for line in lines:
                if line == "event: chunk":
                    break
            status = client.get(f"/api/v1/jobs/{job['job_id']}").json()["status"]
    assert status in ("queued", "processing")


def test_serve_client_hanging_up_still_cancels_its_run(server: ServerProcess, key: str) -> None:
    """A client that closes its connection mid-run gets its job cancelled."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        body = {"prompt": "#fake: hang\nhi", "metadata": {"test": "hang-up"}}
        sock.sendall(_post("/api/v1/run", key, body))
        time.sleep(1.0)
    auth = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + 15
    while True:
        jobs = httpx.get(f"{server.url}/api/v1/jobs", headers=auth, timeout=10).json()["jobs"]
        hung = [j for j in jobs if j["metadata"] == {"test": "hang-up"}]
        if (hung and hung[0]["status"] == "cancelled") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert hung and hung[0]["status"] == "cancelled"
