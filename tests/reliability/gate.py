"""A real `ccgate serve` on 127.0.0.1 with the fast fake `claude`, for the reliability tier."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.fake_claude_factory import make_fake_claude
from tests.support.server import ServerProcess, fake_claude_env

ADMIN_TOKEN = "reliability-admin-token-0123456789abcdef"
ENROLLMENT_SECRET = "reliability-enrollment-secret-0123456789"
API_KEY_NAME = "reliability-app"
HTTP_TIMEOUT_SECS = 30.0
# uvicorn logs an exception that escaped the app as plain text, not JSON.
_UVICORN_ERROR = "Exception in ASGI application"


@dataclass(frozen=True)
class Gate:
    """A running server, its admin token and one API key made through the admin API."""

    server: ServerProcess
    admin_token: str
    api_key: str
    api_key_name: str

    @property
    def url(self) -> str:
        """The server's base URL (always on 127.0.0.1)."""
        return self.server.url

    @property
    def work_dir(self) -> Path:
        """CCGATE_WORK_DIR: every CLI run of this server starts below it."""
        return Path(self.server.env["CCGATE_WORK_DIR"])

    def is_alive(self) -> bool:
        """Whether the process still runs and answers GET /health with 200."""
        if self.server.proc is None or self.server.proc.poll() is not None:
            return False
        try:
            return httpx.get(f"{self.url}/health", timeout=10.0).status_code == 200
        except httpx.TransportError:
            return False

    def error_lines(self) -> list[str]:
        """The server's log lines at error level so far, tracebacks from uvicorn included."""
        return [
            line
            for line in self.server.log_text().splitlines()
            if '"level": "error"' in line or line.startswith(_UVICORN_ERROR)
        ]


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `check` until it holds or `timeout` s pass; return whether it held."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def create_api_key(url: str, admin_token: str, name: str) -> str:
    """Create an API key through `POST /admin/keys` and return its secret."""
    response = httpx.post(
        f"{url}/admin/keys",
        json={"name": name},
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=HTTP_TIMEOUT_SECS,
    )
    assert response.status_code == 201, response.text
    secret = response.json()["key"]
    assert isinstance(secret, str)
    return secret


def gate_env(root: Path, **overrides: Any) -> dict[str, str]:
    """The environment of a server under `root`: SQLite there, fake claude, admin and
    enrollment on, fetch off; CCGATE_* overrides win."""
    claude = make_fake_claude(root / "fake-claude", "text")
    return fake_claude_env(
        root,
        claude,
        ADMIN_TOKEN,
        CCGATE_ENROLLMENT_SECRET=ENROLLMENT_SECRET,
        CCGATE_FETCH_ENABLED="false",
        # A stream that never ends shows itself within a second of a client's time limit.
        CCGATE_SSE_HEARTBEAT_SECS=1,
        **overrides,
    )
