"""The lean path: exact routes served straight to their endpoint, errors through the app's
own exception handlers, everything else through the framework as before."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ccgate.api.app import create_app
from ccgate.api.errors import install_error_handlers
from ccgate.api.lean import LeanRoutes, route_of
from ccgate.config import Settings
from ccgate.errors import ApiError


def _app(calls: list[str]) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/messages")
    async def framework(request: Request) -> Response:
        calls.append("framework")
        return JSONResponse({"via": "framework"})

    async def lean(request: Request) -> Response:
        calls.append("lean")
        body = await request.json()
        if body.get("fail"):
            raise ApiError("invalid_request", "bad body", param="fail")
        return JSONResponse({"via": "lean", "route": request.scope["route"].path})

    app.add_middleware(
        LeanRoutes,
        routes={("POST", "/v1/messages"): (lean, route_of(app.routes, "POST", "/v1/messages"))},
    )
    return app


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_lean_route_serves_its_exact_path_and_names_the_registered_route() -> None:
    """POST on the exact path reaches the lean endpoint, with the framework route in scope."""
    calls: list[str] = []
    async with _client(_app(calls)) as client:
        answer = await client.post("/v1/messages", json={})
    assert answer.json() == {"via": "lean", "route": "/v1/messages"}
    assert calls == ["lean"]


async def test_lean_route_errors_go_through_the_apps_handlers() -> None:
    """An ApiError from the lean endpoint is rendered by the app's handler, in the door's shape."""
    async with _client(_app([])) as client:
        answer = await client.post("/v1/messages", json={"fail": True})
    assert answer.status_code == 400
    assert answer.json()["error"] == {
        "type": "invalid_request_error",
        "message": "bad body",
    }


async def test_lean_route_leaves_other_methods_and_paths_to_the_framework() -> None:
    """Another method or a longer path goes through FastAPI's router as before."""
    calls: list[str] = []
    async with _client(_app(calls)) as client:
        assert (await client.get("/v1/messages")).status_code == 405
        assert (await client.post("/v1/messages/", json={})).status_code in (307, 404)
    assert "lean" not in calls


def test_app_serves_the_hot_native_doors_on_the_lean_path(
    make_settings: Callable[..., Settings],
) -> None:
    """create_app puts POST /api/v1/run and /api/v1/jobs on the lean path, naming their routes."""
    app = create_app(make_settings())
    lean = next(m for m in app.user_middleware if getattr(m, "cls", None) is LeanRoutes)
    routes = cast("dict[tuple[str, str], tuple[object, object]]", lean.kwargs["routes"])
    documented = app.openapi()["paths"]
    for path in ("/v1/messages", "/api/v1/run", "/api/v1/jobs"):
        endpoint, route = routes[("POST", path)]
        assert getattr(route, "path", None) == path and callable(endpoint)
        assert "post" in documented[path]
