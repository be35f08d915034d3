"""End-to-end fixtures: the real `ccgate serve` process, the real CLI, a fake Anthropic API."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
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


@pytest.fixture
def claude_path() -> Path:
    """The real pinned claude CLI; skips (or fails in CI) when it is not installed."""
    path = find_real_claude()
    if path is None:
        service_missing("the real claude CLI is not installed: run scripts/test.sh or set "
                        "CCGATE_TEST_CLAUDE")
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
def server_env(fake: FakeAnthropic, home: Path, work_dir: Path,
               claude_path: Path) -> dict[str, str]:
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
        server = ServerProcess({**env, **{k: str(v) for k, v in overrides.items()}},
                               tmp_path / f"server{len(started)}")
        started.append(server)
        return server.start()

    yield start
    for server in reversed(started):
        server.stop()
    # A server that failed its test may have left runs behind: end them, by pid.
    for pid in processes_under(work_dir):
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
    with httpx.Client(base_url=gateway.url, timeout=HTTP_TIMEOUT_SECS,
                      headers={"Authorization": f"Bearer {api_key}"}) as http:
        yield http
