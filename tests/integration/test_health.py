"""Liveness and readiness, and what they (and a missing CLI) reveal to whom."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ccgate.api.app import create_app
from ccgate.api.deps import app_services
from ccgate.config import Settings

ADMIN_TOKEN = "admin-token-for-health-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _fake_cli(tmp_path: Path) -> Path:
    cli = tmp_path / "claude"
    cli.write_text("#!/bin/sh\necho '9.9.9 (Claude Code)'\n")
    cli.chmod(0o755)
    return cli


async def test_health_is_ok_without_auth(gateway_factory: Any) -> None:
    """/health answers 200 with no key and no dependency check."""
    gw = await gateway_factory()
    response = await gw.client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_readyz_reports_missing_cli(gateway_factory: Any, tmp_path: Path) -> None:
    """With no claude CLI, /readyz with the admin token is 503 and says what is missing and
    how to fix it."""
    gw = await gateway_factory(
        CCGATE_CLAUDE_PATH=str(tmp_path / "no-such-claude"), CCGATE_ADMIN_TOKEN=ADMIN_TOKEN
    )
    response = await gw.client.get("/readyz", headers=ADMIN)
    assert response.status_code == 503
    [problem] = response.json()["problems"]
    assert "claude CLI not found" in problem and "npm install" in problem


async def test_readyz_reports_cli_version(gateway_factory: Any, tmp_path: Path) -> None:
    """With a CLI that answers --version, /readyz with the admin token is 200 and reports
    path and version."""
    cli = _fake_cli(tmp_path)
    gw = await gateway_factory(CCGATE_CLAUDE_PATH=str(cli), CCGATE_ADMIN_TOKEN=ADMIN_TOKEN)
    response = await gw.client.get("/readyz", headers=ADMIN)
    assert response.status_code == 200
    assert response.json()["claude"] == {"path": str(cli), "version": "9.9.9 (Claude Code)"}
    assert response.json()["store"] == "ok"


@pytest.mark.parametrize("admin_api", [True, False], ids=["admin-on", "admin-off"])
async def test_readyz_without_the_admin_token_says_only_ready_or_not(
    gateway_factory: Any, tmp_path: Path, admin_api: bool
) -> None:
    """Without the admin token /readyz keeps its status code but its body is only the status:
    no CLI path, no version, no reasons."""
    env = {"CCGATE_ADMIN_TOKEN": ADMIN_TOKEN} if admin_api else {}
    ready = await gateway_factory(CCGATE_CLAUDE_PATH=str(_fake_cli(tmp_path)), **env)
    response = await ready.client.get("/readyz")
    assert (response.status_code, response.json()) == (200, {"status": "ready"})
    missing = await gateway_factory(
        CCGATE_CLAUDE_PATH=str(tmp_path / "secret-dir" / "claude"),
        CCGATE_DATABASE_URL=f"sqlite:///{tmp_path / 'other.db'}",
        **env,
    )
    response = await missing.client.get("/readyz")
    assert (response.status_code, response.json()) == (503, {"status": "not_ready"})


async def test_readyz_with_a_wrong_admin_token_is_401(gateway_factory: Any) -> None:
    """A bearer that is not the admin token gets 401 at /readyz, never the details."""
    gw = await gateway_factory(CCGATE_ADMIN_TOKEN=ADMIN_TOKEN)
    response = await gw.client.get("/readyz", headers=gw.auth())
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.fixture
async def cliless_app(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """The app on the CLI backend with CCGATE_CLAUDE_PATH pointing at nothing, and a key."""
    app = create_app(make_settings(CCGATE_CLAUDE_PATH=str(tmp_path / "secret-dir" / "claude")))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ccgate.test"
        ) as client,
    ):
        key = (await app_services(app).keyring.create("app")).secret
        client.headers["Authorization"] = f"Bearer {key}"
        yield client


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/run", {"prompt": "hi"}),
        (
            "/v1/messages",
            {"model": "sonnet", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
        ),
        (
            "/v1/chat/completions",
            {"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]},
        ),
    ],
    ids=["native", "anthropic", "openai"],
)
async def test_cli_unavailable_error_never_shows_the_cli_path(
    cliless_app: httpx.AsyncClient, tmp_path: Path, path: str, body: dict[str, Any]
) -> None:
    """A key holder's cli_unavailable error says the CLI is not available and how to fix
    it, at every door, without the path the server looked at."""
    response = await cliless_app.post(path, json=body)
    assert response.status_code == 503, response.text
    assert "not available" in response.text and "npm install" in response.text
    assert str(tmp_path) not in response.text and "secret-dir" not in response.text


async def test_openapi_documents_the_run_route(gateway_factory: Any) -> None:
    """/openapi.json describes POST /api/v1/run with its body schema."""
    gw = await gateway_factory()
    spec = (await gw.client.get("/openapi.json")).json()
    body = spec["paths"]["/api/v1/run"]["post"]["requestBody"]
    assert "prompt" in body["content"]["application/json"]["schema"]["properties"]
