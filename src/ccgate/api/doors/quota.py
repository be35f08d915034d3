"""The quota door: the subscription's plan windows as last seen, for any key and for admins."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ccgate.api.auth import require_admin, require_key
from ccgate.api.deps import services_of
from ccgate.jobs import JobService
from ccgate.runners.plan_windows import PlanWindow
from ccgate.store import KeyRecord

router = APIRouter(tags=["quota"])

CallerKey = Annotated[KeyRecord, Depends(require_key)]


def _window_view(window: PlanWindow, used: float | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "window": window.name,
        "status": window.status,
        "utilization": window.utilization,
        "resets_at": window.resets_at.isoformat() if window.resets_at else None,
        "seen_at": window.seen_at.isoformat(),
    }
    if used is not None:
        view["key_used"] = round(used, 6)
    return view


async def _report(request: Request, key: KeyRecord | None) -> dict[str, Any]:
    jobs: JobService = services_of(request).jobs
    await jobs.plan.refresh()
    closed = jobs.plan.closed_until()
    used: dict[str, float] = {}
    if key is not None:
        now = jobs.clock()
        used = {
            u.name: u.used
            for u in await jobs.store.plan_windows.usage_of(key.id)
            if u.resets_at is None or u.resets_at > now
        }
    report: dict[str, Any] = {
        "windows": [
            _window_view(w, used.get(w.name, 0.0) if key is not None else None)
            for w in jobs.plan.windows.values()
        ],
        "closed_until": closed.isoformat() if closed else None,
    }
    if key is not None:
        report["window_share"] = key.policy.window_share
    return report


@router.get("/api/v1/quota", summary="The plan windows as last seen, and this key's use")
async def quota(request: Request, key: CallerKey) -> JSONResponse:
    """Each plan window's status, utilization, reset and when it was seen, with what this
    key's runs used of it; empty until the CLI has reported a window."""
    return JSONResponse(await _report(request, key))


@router.get(
    "/admin/quota", summary="The plan windows as last seen", dependencies=[Depends(require_admin)]
)
async def admin_quota(request: Request) -> JSONResponse:
    """Each plan window's status, utilization, reset and when it was seen."""
    return JSONResponse(await _report(request, None))
