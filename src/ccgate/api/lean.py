"""The lean path: the hottest routes served without FastAPI's router and dependency machinery.

Matching one request against every route of a dozen included routers, solving its
dependencies and wrapping it in FastAPI's request/response layers cost about a fifth of the
gateway's CPU per ``POST /v1/messages`` on the API backend (docs/benchmarks.md). ``LeanRoutes``
sits inside the request middleware (ids, body cap, access log, audit: unchanged) and hands an
exact ``(method, path)`` match straight to its endpoint, a plain ``Request -> Response``
function of the door. The door's FastAPI route stays registered: it describes the route in
the OpenAPI document and names it in audit rows (``scope["route"]``), and every other request
goes through FastAPI as before. Errors go to the app's own exception handlers, as FastAPI's
would send them, so the error shapes are the same.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette._exception_handler import wrap_app_handling_exceptions
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]


class LeanRoutes:
    """Serves ``routes`` (method and exact path -> endpoint and its registered route) directly;
    passes everything else to ``app``."""

    def __init__(
        self, app: ASGIApp, *, routes: Mapping[tuple[str, str], tuple[Endpoint, BaseRoute]]
    ) -> None:
        self.app = app
        self.routes = dict(routes)
        self._handlers: tuple[dict[Any, Any], dict[int, Any]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = self.routes.get((scope["method"], scope["path"]))
            if found is not None:
                await self._serve(found[0], found[1], scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(
        self, endpoint: Endpoint, route: BaseRoute, scope: Scope, receive: Receive, send: Send
    ) -> None:
        scope["route"] = route
        scope["endpoint"] = endpoint
        scope.setdefault("path_params", {})
        scope["starlette.exception_handlers"] = self._exception_handlers(scope)
        request = Request(scope, receive, send)

        async def respond(scope: Scope, receive: Receive, send: Send) -> None:
            response = await endpoint(request)
            await response(scope, receive, send)

        await wrap_app_handling_exceptions(respond, request)(scope, receive, send)

    def _exception_handlers(self, scope: Scope) -> tuple[dict[Any, Any], dict[int, Any]]:
        # The handlers Starlette's ExceptionMiddleware would use: the app's, less the ones for
        # 500 and Exception, which belong to ServerErrorMiddleware further out.
        if self._handlers is None:
            registered: dict[Any, Any] = scope["app"].exception_handlers
            by_type = {
                k: v for k, v in registered.items() if not isinstance(k, int) and k is not Exception
            }
            by_status = {k: v for k, v in registered.items() if isinstance(k, int) and k != 500}
            self._handlers = (by_type, by_status)
        return self._handlers


def route_of(routes: list[BaseRoute], method: str, path: str) -> BaseRoute:
    """The registered route for ``method`` and ``path`` (its template names audit rows)."""
    for route in routes:
        if getattr(route, "path", None) == path and method in (getattr(route, "methods", ()) or ()):
            return route
    raise LookupError(f"no route {method} {path}")
