"""The app factory: wires settings, store, runner, queue and doors into one ASGI app."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

import structlog
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
from ccgate.api.admission import JobTickets
from ccgate.api.errors import install_error_handlers
from ccgate.api.middleware import RequestContextMiddleware, add_cors
from ccgate.api.views import render_job
from ccgate.audit import AuditLog
from ccgate.circuit_shared import SharedCircuit
from ccgate.config import Settings
from ccgate.errors import ApiError
from ccgate.events import JobEventHub
from ccgate.jobs import JobService, QueueLimits
from ccgate.limits import Limiter
from ccgate.models import model_policy
from ccgate.notify import notifier_for
from ccgate.runners.anthropic_api import api_runner
from ccgate.runners.base import Runner
from ccgate.runners.cli import cli_runner
from ccgate.runners.cli_status import CliStatus
from ccgate.security.enrollment import EnrollmentService
from ccgate.security.keyring import Keyring
from ccgate.security.netguard import BlockedDestination, OutboundGuard
from ccgate.security.netrules import ClientAddressRules
from ccgate.security.signin_throttle import SignInThrottle
from ccgate.sessions import SessionBook
from ccgate.store import Store
from ccgate.webhooks import WebhookDispatcher, delivery_view

log = structlog.get_logger("ccgate")


def create_app(settings: Settings, *, runner: Runner | None = None) -> FastAPI:
    """Build the ccgate app; the store opens and the queue starts with the app's lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await Store.open(settings.database_url)
        cli_status = await CliStatus(settings).refresh()
        if cli_status.problem:
            log.warning("claude_cli_missing", problem=cli_status.problem)
        else:
            log.info("claude_cli_found", path=cli_status.path, version=cli_status.version)
        if settings.allow_tools:
            log.warning(
                "tools_enabled",
                detail="CCGATE_ALLOW_TOOLS=true: the model may run "
                "shell commands and touch files on this machine",
            )
        shared_breaker = (
            SharedCircuit(
                settings.circuit_failures, settings.circuit_cooldown_secs, settings.redis_url
            )
            if runner is None and settings.backend == "api" and settings.redis_url
            else None
        )
        if shared_breaker is not None:
            await shared_breaker.start()
        backend = runner or (
            api_runner(settings, shared_breaker)
            if settings.backend == "api"
            else cli_runner(settings, cli_status.path)
        )
        backend = metrics.MeteredRunner(backend, settings.backend)
        app.state.runner = backend
        app.state.breaker = getattr(backend.inner, "breaker", None)
        limiter = Limiter.from_settings(settings)
        app.state.limiter = limiter
        jobs = JobService(
            store,
            backend,
            QueueLimits(
                concurrency=settings.concurrency,
                queue_size=settings.queue_size,
                max_attempts=settings.max_attempts,
                lease_secs=settings.lease_secs,
                shutdown_grace_secs=settings.shutdown_grace_secs,
                job_ttl_hours=settings.job_ttl_hours,
                cleanup_interval_secs=settings.cleanup_interval_secs,
            ),
            hub=JobEventHub(store, notifier_for(settings.redis_url, settings.database_url)),
        )
        guard = OutboundGuard(settings.outbound_allow)
        dispatcher = WebhookDispatcher(store, guard, settings, render_job, jobs.node_id)
        jobs.on_finished.append(lambda job: dispatcher.wake() if job.callback_url else None)

        async def webhook_state(job_id: str) -> dict[str, Any] | None:
            return delivery_view(await store.webhooks.for_job(job_id))

        def check_callback(url: str) -> None:
            try:
                guard.check_url(url)
            except BlockedDestination as exc:
                raise ApiError(
                    "invalid_request", f"callback_url is not allowed: {exc}", param="callback_url"
                ) from None

        sessions = SessionBook(store, settings.session_ttl_hours)
        jobs.before_announce.append(sessions.record_turn)
        jobs.cleanups.append(("sessions", sessions.delete_expired))
        jobs.cleanups.append(("files", store.files.delete_expired))
        job_tickets = JobTickets()
        jobs.on_finished.append(job_tickets.job_finished)
        jobs.on_finished.append(lambda job: metrics.job_finished(job.status.value))
        audit = AuditLog(store)
        jobs.on_finished.append(audit.record_job_outcome)
        app.state.sessions = sessions
        app.state.job_tickets = job_tickets
        app.state.store = store
        app.state.audit = audit
        app.state.cli_status = cli_status
        app.state.keyring = Keyring(store)
        app.state.enrollment = (
            EnrollmentService(store, settings.enrollment_secret, settings.device_token_ttl_secs)
            if settings.enrollment_secret
            else None
        )
        app.state.jobs = jobs
        app.state.webhook_state = webhook_state
        app.state.webhooks = dispatcher
        app.state.check_callback = check_callback
        app.state.shutdown = jobs.begin_shutdown
        await audit.start()
        await jobs.start()
        await dispatcher.start()
        sampling = app.state.metrics_sampling = metrics_door.StateSampling(app.state)
        sampling.start()
        # Everything built so far lives as long as the server: keep it out of the collector's
        # full passes, which otherwise pause every request for ~100 ms now and then.
        gc.freeze()
        try:
            yield
        finally:
            await sampling.stop()
            await jobs.stop()
            await dispatcher.stop()
            await audit.stop()
            await limiter.aclose()
            if shared_breaker is not None:
                await shared_breaker.stop()
            await store.close()

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
    app.state.settings = settings
    metrics.configure(
        allowed_models=settings.allowed_models,
        aliases=settings.model_aliases,
        multiproc_dir=settings.prometheus_multiproc_dir,
    )
    app.state.admin_signins = SignInThrottle()
    app.state.requires_cli = runner is None and settings.backend == "cli"
    app.state.models = model_policy(
        settings.allowed_models, settings.default_model, settings.model_aliases, settings.backend
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
