"""Liveness and readiness."""

from __future__ import annotations

from pathlib import Path
from typing import Any


async def test_health_is_ok_without_auth(gateway_factory: Any) -> None:
    """/health answers 200 with no key and no dependency check."""
    gw = await gateway_factory()
    response = await gw.client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_readyz_reports_missing_cli(gateway_factory: Any, tmp_path: Path) -> None:
    """With no claude CLI, /readyz is 503 and says what is missing and how to fix it."""
    gw = await gateway_factory(CCGATE_CLAUDE_PATH=str(tmp_path / "no-such-claude"))
    response = await gw.client.get("/readyz")
    assert response.status_code == 503
    [problem] = response.json()["problems"]
    assert "claude CLI not found" in problem and "npm install" in problem


async def test_readyz_reports_cli_version(gateway_factory: Any, tmp_path: Path) -> None:
    """With a CLI that answers --version, /readyz is 200 and reports path and version."""
    cli = tmp_path / "claude"
    cli.write_text("#!/bin/sh\necho '9.9.9 (Claude Code)'\n")
    cli.chmod(0o755)
    gw = await gateway_factory(CCGATE_CLAUDE_PATH=str(cli))
    response = await gw.client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["claude"] == {"path": str(cli), "version": "9.9.9 (Claude Code)"}
    assert response.json()["store"] == "ok"


async def test_openapi_documents_the_run_route(gateway_factory: Any) -> None:
    """/openapi.json describes POST /api/v1/run with its body schema."""
    gw = await gateway_factory()
    spec = (await gw.client.get("/openapi.json")).json()
    body = spec["paths"]["/api/v1/run"]["post"]["requestBody"]
    assert "prompt" in body["content"]["application/json"]["schema"]["properties"]
