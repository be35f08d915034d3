"""The app factory: wires settings, store, runner, queue and doors into one ASGI app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from ccgate import __version__, metrics
from ccgate.api import (
    admin,
    compat,
    console,
    enroll,
    health,
    metrics_door,
    model_list,
    native,
    quota,
    usage,
)
from ccgate.api import anthropic as anthropic_door
from ccgate.api import fetch as fetch_door
from ccgate.api import files as files_door
from ccgate.api import jobs as jobs_door
from ccgate.api import openai as openai_door
from ccgate.api import sessions as sessions_door
from ccgate.api.errors import install_error_handlers
from ccgate.api.middleware import RequestContextMiddleware, add_cors
from ccgate.config import Settings
from ccgate.runners.base import Runner
from ccgate.security.netrules import ClientAddressRules
from ccgate.services import open_services


def create_app(settings: Settings, *, runner: Runner | None = None) -> FastAPI:
    """Build the ccgate app; its services (store, queue, backend) open with its lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(settings, runner=runner) as services:
            app.state.services = services
            yield

    # docs_url/redoc_url off: FastAPI's own pages load Swagger UI and ReDoc from a CDN; the
    # console serves /docs from a local copy instead.
    app = FastAPI(
        title="ccgate",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="A self-hosted gateway for the Claude Code CLI.",
    )
    metrics.configure(
        allowed_models=settings.allowed_models,
        aliases=settings.model_aliases,
        multiproc_dir=settings.prometheus_multiproc_dir,
    )
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        rules=ClientAddressRules(settings.allow_cidrs, settings.trusted_proxies),
        backend=settings.backend,
    )
    if settings.cors_origins:
        add_cors(app, settings.cors_origins)
    app.include_router(health.router)
    app.include_router(native.router)
    app.include_router(jobs_door.router)
    app.include_router(files_door.router)
    app.include_router(compat.router)
    app.include_router(usage.router)
    app.include_router(quota.router)
    app.include_router(admin.router)
    app.include_router(enroll.router)
    app.include_router(fetch_door.router)
    app.include_router(anthropic_door.router)
    app.include_router(openai_door.router)
    app.include_router(model_list.router)
    app.include_router(sessions_door.router)
    app.include_router(console.router)
    app.include_router(metrics_door.router)
    return app
