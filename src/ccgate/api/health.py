"""Liveness (``/health``) and readiness (``/readyz``): is the store there, is the CLI there."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ccgate import __version__
from ccgate.api.auth import admin_signed_in, presented_secret
from ccgate.api.deps import services_of
from ccgate.errors import ApiError

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    """Always 200 while the process serves; checks no dependency."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: store reachable, CLI found")
async def readyz(request: Request) -> JSONResponse:
    """200 when jobs can run, else 503. Only the admin token (as a bearer) gets the details
    and the reasons; anyone else gets ``{"status": "ready" | "not_ready"}``, since the
    details name server paths and versions."""
    token: str | None = services_of(request).settings.admin_token
    detailed = token is not None and presented_secret(request) is not None
    if token is not None and detailed and not admin_signed_in(request, token):
        raise ApiError(
            "authentication_error", "wrong admin token (send none for the plain readiness answer)"
        )
    checks, problems = await readiness_checks(request)
    status = 200 if not problems else 503
    if not detailed:
        return JSONResponse({"status": checks["status"]}, status_code=status)
    return JSONResponse(checks, status_code=status)


async def readiness_checks(request: Request) -> tuple[dict[str, Any], list[str]]:
    """The readiness details (version, store, backend, CLI path and version, circuit state,
    status, problems) and the problems alone; admin-only, since they name server paths."""
    state = services_of(request)
    problems: list[str] = []
    checks: dict[str, Any] = {"version": __version__}
    try:
        await state.store.db.ping()
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = "unreachable"
        problems.append(f"store unreachable: {type(exc).__name__}")
    checks["backend"] = state.backend.name
    if state.backend.capabilities.needs_cli:
        cli = await state.cli_status.refresh()
        checks["claude"] = {"path": cli.path, "version": cli.version}
        if cli.problem:
            problems.append(cli.problem)
    breaker = state.breaker
    if breaker is not None:
        checks["circuit"] = breaker.snapshot()["state"]
    if not state.jobs.accepting:
        problems.append("shutting down: no new jobs are accepted")
    checks["status"] = "ready" if not problems else "not_ready"
    checks["problems"] = problems
    return checks, problems
