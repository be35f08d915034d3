"""Liveness (``/health``) and readiness (``/readyz``): is the store there, is the CLI there."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ccgate import __version__

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    """Always 200 while the process serves; checks no dependency."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: store reachable, CLI found")
async def readyz(request: Request) -> JSONResponse:
    """200 when jobs can run; 503 with the reasons when they cannot."""
    state = request.app.state
    problems: list[str] = []
    checks: dict[str, Any] = {"version": __version__}
    try:
        await state.store.db.ping()
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = "unreachable"
        problems.append(f"store unreachable: {type(exc).__name__}")
    checks["backend"] = state.settings.backend
    if state.settings.backend == "cli":
        cli = await state.cli_status.refresh()
        checks["claude"] = {"path": cli.path, "version": cli.version}
        if cli.problem:
            problems.append(cli.problem)
    breaker = getattr(state, "breaker", None)
    if breaker is not None:
        checks["circuit"] = breaker.snapshot()["state"]
    if not state.jobs.accepting:
        problems.append("shutting down: no new jobs are accepted")
    checks["status"] = "ready" if not problems else "not_ready"
    checks["problems"] = problems
    return JSONResponse(checks, status_code=200 if not problems else 503)
