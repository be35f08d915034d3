"""The app factory: wires settings, store, runner, queue and doors into one ASGI app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from ccgate import __version__, metrics
from ccgate.api import admin, console, enroll, health, metrics_door
from ccgate.api.doors import (
    async_jobs,
    batches,
    chat,
    compat,
    fetch,
    files,
    messages,
    model_list,
    quota,
    responses,
    run,
    session_list,
    usage,
)
from ccgate.api.errors import install_error_handlers
from ccgate.api.lean import LeanRoutes, route_of
from ccgate.api.middleware import RequestContextMiddleware, add_cors
from ccgate.config import Settings
from ccgate.runners.base import Runner
from ccgate.security.netrules import ClientAddressRules
from ccgate.services import open_services

_NO_FASTAPI_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}


def create_app(settings: Settings, *, runner: Runner | None = None) -> FastAPI:
    """Build the ccgate app; its services (store, queue, backend) open with its lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(
            settings, runner=runner, batch_door=batches.batch_hooks
        ) as services:
            app.state.services = services
            yield

    # docs_url/redoc_url off: FastAPI's own pages load Swagger UI and ReDoc from a CDN; the
    # console serves /docs from a local copy instead.
    # FastAPI's own OpenTelemetry off: ccgate's tracing (ccgate.tracing) is the only tracing,
    # with request ids as trace ids and no client traceparent; FastAPI's would trust one and
    # record exception text, and asks the global providers whether it is on at every request.
    app = FastAPI(
        title="ccgate",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="A self-hosted gateway for the Claude Code CLI.",
        telemetry=_NO_FASTAPI_TELEMETRY,
    )
    metrics.configure(
        allowed_models=settings.allowed_models,
        aliases=settings.model_aliases,
        multiproc_dir=settings.prometheus_multiproc_dir,
    )
    install_error_handlers(app)
    # Inside the request middleware (added first = innermost): the hottest doors, lean.
    app.add_middleware(
        LeanRoutes,
        routes={
            ("POST", "/v1/messages"): (
                messages.create_message_lean,
                route_of(messages.router.routes, "POST", "/v1/messages"),
            ),
            ("POST", "/api/v1/run"): (
                run.run_lean,
                route_of(run.router.routes, "POST", "/api/v1/run"),
            ),
            ("POST", "/api/v1/jobs"): (
                async_jobs.submit_lean,
                route_of(async_jobs.router.routes, "POST", "/api/v1/jobs"),
            ),
        },
    )
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        rules=ClientAddressRules(settings.allow_cidrs, settings.trusted_proxies),
        backend=settings.backend,
    )
    if settings.cors_origins:
        add_cors(app, settings.cors_origins)
    for router in (
        health.router,
        run.router,
        async_jobs.router,
        files.router,
        compat.router,
        usage.router,
        quota.router,
        admin.router,
        enroll.router,
        fetch.router,
        messages.router,
        batches.router,
        chat.router,
        responses.router,
        model_list.router,
        session_list.router,
        console.router,
        metrics_door.router,
    ):
        app.include_router(router)
    return app
