"""End-to-end fixtures: the real `ccgate serve` process, the real CLI, a fake Anthropic API."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import service_missing
from tests.support.fake_anthropic import FakeAnthropic, cli_env
from tests.support.real_claude import find_real_claude
from tests.support.server import ServerProcess, processes_under

StartServer = Callable[..., ServerProcess]
HTTP_TIMEOUT_SECS = 60.0


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `check` until it holds or `timeout` s pass; return whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_for_no_runs(work_dir: Path, timeout: float = 5.0) -> list[int]:
    """Wait for every CLI process under `work_dir` to end; return the pids still alive."""
    wait_until(lambda: not processes_under(work_dir), timeout)
    return processes_under(work_dir)


def _texts(blocks: Any) -> list[str]:
    if isinstance(blocks, str):
        return [blocks]
    if not isinstance(blocks, list):
        return []
    return [b["text"] for b in blocks if isinstance(b, dict) and isinstance(b.get("text"), str)]


def system_texts(body: Any) -> list[str]:
    """The text of every `system` block of an upstream Messages request."""
    return _texts(body.get("system")) if isinstance(body, dict) else []


def user_texts(body: Any) -> list[str]:
    """The text of every text block in the user turns of an upstream Messages request."""
    messages = body.get("messages") if isinstance(body, dict) else None
    return [
        text
        for message in messages or []
        if isinstance(message, dict) and message.get("role") == "user"
        for text in _texts(message.get("content"))
    ]


def raw_run_request(key: str, body: Mapping[str, Any]) -> bytes:
    """The bytes of one `POST /api/v1/run`, for tests that must drop the connection."""
    data = json.dumps(body).encode()
    head = (
        "POST /api/v1/run HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def wait_for_run_started(fake: FakeAnthropic, work_dir: Path, timeout: float = 20.0) -> list[int]:
    """Wait until the upstream got a request and a CLI run is alive; return the runs' pids."""
    started = wait_until(
        lambda: bool(fake.message_requests() and processes_under(work_dir)), timeout
    )
    assert started, "no CLI run reached the upstream"
    return processes_under(work_dir)


def keyed_client(server: ServerProcess, key_name: str = "e2e") -> httpx.Client:
    """A client for `server` sending a freshly created key; close it (or use `with`)."""
    key = server.create_key(key_name)
    return httpx.Client(
        base_url=server.url,
        timeout=HTTP_TIMEOUT_SECS,
        headers={"Authorization": f"Bearer {key}"},
    )


@contextlib.contextmanager
def run_in_background(
    client: httpx.Client, body: Mapping[str, Any]
) -> Iterator[Future[httpx.Response]]:
    """Send `POST /api/v1/run` on a thread; the block waits for the answer when it ends."""
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(client.post, "/api/v1/run", json=body)


@pytest.fixture
def claude_path() -> Path:
    """The real pinned claude CLI; skips (or fails in CI) when it is not installed."""
    path = find_real_claude()
    if path is None:
        service_missing(
            "the real claude CLI is not installed: run scripts/test.sh or set CCGATE_TEST_CLAUDE"
        )
    assert path is not None
    return path


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    """A running fake Anthropic API."""
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A throwaway HOME for the server and the CLI."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    """CCGATE_WORK_DIR: every CLI run's directory is created below it."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def server_env(
    fake: FakeAnthropic, home: Path, work_dir: Path, claude_path: Path
) -> dict[str, str]:
    """A fresh environment for `ccgate serve` running the real CLI against the fake."""
    return {
        **cli_env(fake, home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "CCGATE_CLAUDE_PATH": str(claude_path),
        "CCGATE_WORK_DIR": str(work_dir),
        "CCGATE_LOG_LEVEL": "info",
    }


@pytest.fixture
def start_server(tmp_path: Path, work_dir: Path) -> Iterator[StartServer]:
    """Factory: `start_server(env, **CCGATE_overrides)` starts a server, stopped at teardown."""
    started: list[ServerProcess] = []

    def start(env: Mapping[str, str], **overrides: Any) -> ServerProcess:
        server = ServerProcess(
            {**env, **{k: str(v) for k, v in overrides.items()}}, tmp_path / f"server{len(started)}"
        )
        started.append(server)
        return server.start()

    yield start
    for server in reversed(started):
        server.stop()
        # pytest shows this only when the test failed.
        print(f"--- log of ccgate serve in {server.cwd} ---\n{server.log_text()}")
    # A server that failed its test may have left runs behind: end them, by pid.
    for pid in processes_under(work_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def gateway(start_server: StartServer, server_env: dict[str, str]) -> ServerProcess:
    """A running server with the default e2e environment."""
    return start_server(server_env)


@pytest.fixture
def api_key(gateway: ServerProcess) -> str:
    """A fresh API key of `gateway`."""
    return gateway.create_key("e2e")


@pytest.fixture
def client(gateway: ServerProcess, api_key: str) -> Iterator[httpx.Client]:
    """An HTTP client for `gateway` that sends `api_key`."""
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=gateway.url, timeout=HTTP_TIMEOUT_SECS, headers=headers) as http:
        yield http


@pytest.fixture
def make_client(
    start_server: StartServer, server_env: dict[str, str]
) -> Iterator[Callable[..., httpx.Client]]:
    """Factory: `make_client(**CCGATE_overrides)` starts a server and returns a keyed client."""
    clients: list[httpx.Client] = []

    def make(**overrides: Any) -> httpx.Client:
        clients.append(keyed_client(start_server(server_env, **overrides)))
        return clients[-1]

    yield make
    for http in clients:
        http.close()


@dataclass(frozen=True)
class Hook:
    """One request the webhook receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes


class HookHandler(BaseHTTPRequestHandler):
    """Records each POST; answers 503 while ``server.failures`` is above 0, then 204."""

    server: HookServer

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet."""

    def do_POST(self) -> None:
        """Record the request and answer 204."""
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        with self.server.lock:
            self.server.hooks.append(Hook(self.path, headers, body))
            failing = self.server.failures > 0
            self.server.failures -= failing
        self.send_response(503 if failing else 204)
        self.send_header("content-length", "0")
        self.end_headers()


class HookServer(ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1: ``hooks`` lists what arrived, ``failures`` how many
    of the next requests get a 503."""

    daemon_threads = True

    def __init__(self) -> None:
        self.hooks: list[Hook] = []
        self.failures = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), HookHandler)

    @property
    def url(self) -> str:
        """Where to send webhooks."""
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


@pytest.fixture
def hook_server() -> Iterator[HookServer]:
    """A webhook receiver on 127.0.0.1 recording every POST."""
    server = HookServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)
