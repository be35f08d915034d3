"""Operating the real server: revoking keys live, starting it before the CLI is installed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import StartServer
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.server import ServerProcess, base_path_without

INSTALL_COMMAND = "npm install -g @anthropic-ai/claude-code"
ADMIN_TOKEN = "e2e-operations-admin-token-0123456789"


@pytest.mark.real_cli
def test_keys_revoke_refuses_very_next_request(
    fake: FakeAnthropic, gateway: ServerProcess, client: httpx.Client
) -> None:
    """`ccgate keys revoke` while the server runs makes the key's next request a 401."""
    assert client.post("/api/v1/run", json={"prompt": "hi"}).status_code == 200

    revoked = gateway.cli("keys", "revoke", "e2e")
    response = client.post("/api/v1/run", json={"prompt": "hi again"})

    assert revoked.returncode == 0, revoked.stderr
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "authentication_error"
    assert len(fake.message_requests()) == 1, "a revoked key still reached the CLI"


@pytest.fixture
def cliless_server(start_server: StartServer, home: Path, work_dir: Path) -> ServerProcess:
    """A server with no claude on its PATH and CCGATE_CLAUDE_PATH unset."""
    path = base_path_without("claude")
    assert shutil.which("claude", path=path) is None
    return start_server(
        {
            "PATH": path,
            "HOME": str(home),
            "CCGATE_WORK_DIR": str(work_dir),
            "CCGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        }
    )


def cli_problem_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """The server's log lines (JSON) that talk about the claude CLI."""
    lines = [line for line in server.log_text().splitlines() if "claude" in line.lower()]
    return [json.loads(line) for line in lines]


def test_serve_without_cli_logs_one_fix_line(cliless_server: ServerProcess) -> None:
    """Without the CLI the server starts and logs one line: what is missing and the fix."""
    [entry] = cli_problem_lines(cliless_server)

    assert entry["level"] == "warning"
    assert "claude CLI not found" in entry["problem"]
    assert INSTALL_COMMAND in entry["problem"]
    assert "CCGATE_CLAUDE_PATH" in entry["problem"]


def test_serve_without_cli_readyz_reports_problem(cliless_server: ServerProcess) -> None:
    """Without the CLI /readyz is 503; with the admin token it names the same problem the
    log does, without it it says only "not_ready"."""
    with httpx.Client(base_url=cliless_server.url, timeout=30) as http:
        plain = http.get("/readyz")
        response = http.get("/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    assert (plain.status_code, plain.json()) == (503, {"status": "not_ready"})
    assert response.status_code == 503, response.text
    [logged] = cli_problem_lines(cliless_server)
    assert logged["problem"] in response.json()["problems"]
    assert response.json()["claude"]["path"] is None


def test_serve_without_cli_run_answers_503(cliless_server: ServerProcess) -> None:
    """Without the CLI a run is refused with 503 `cli_unavailable` and the fix."""
    key = cliless_server.create_key("e2e")
    headers = {"Authorization": f"Bearer {key}"}

    with httpx.Client(base_url=cliless_server.url, timeout=30, headers=headers) as http:
        response = http.post("/api/v1/run", json={"prompt": "hi"})

    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["type"] == "cli_unavailable"
    assert INSTALL_COMMAND in error["message"]
    assert error["request_id"] == response.headers["request-id"]
