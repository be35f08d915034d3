"""Every long-lived service of a ccgate process, built and torn down in one place.

``open_services`` is a plain async context manager (no web framework in it): the app's
lifespan enters it and keeps the ``Services`` it yields; tests and the CLI can build the same
services without an app. Doors reach them through one typed dependency (``api/deps.py``).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog

from ccgate import metrics
from ccgate.audit import AuditLog
from ccgate.circuit import CircuitBreaker
from ccgate.circuit_shared import SharedCircuit
from ccgate.config import Settings
from ccgate.errors import ApiError
from ccgate.events import JobEventHub
from ccgate.jobs import JobService, QueueLimits
from ccgate.jobs.batches import BatchHooks, BatchService, BatchSettings
from ccgate.jobs.service import SYNC_CALLER
from ccgate.jobs.views import render_job
from ccgate.limits import Limiter
from ccgate.models import ModelPolicy, model_policy
from ccgate.notify import notifier_for
from ccgate.runners.backend import CAPABILITIES, Backend, backend_name, build_backend
from ccgate.runners.base import Runner
from ccgate.runners.cli_status import CliStatus
from ccgate.sampling import StateSampling
from ccgate.security.enrollment import EnrollmentService
from ccgate.security.keyring import Keyring
from ccgate.security.netguard import BlockedDestination, OutboundGuard
from ccgate.security.signin_throttle import SignInThrottle
from ccgate.sessions import SessionBook
from ccgate.store import Store
from ccgate.tickets import JobTickets
from ccgate.webhooks import WebhookDispatcher, delivery_view

log = structlog.get_logger("ccgate")


@dataclass
class Services:
    """The services one ccgate process runs, typed, built by ``open_services``."""

    settings: Settings
    store: Store
    backend: Backend
    # The backend's runner under the metrics wrapper: what jobs and direct turns call.
    runner: Runner
    limiter: Limiter
    jobs: JobService
    # Message Batches: fed to ``jobs`` once a door has handed in its hooks (``open_services``).
    batches: BatchService
    keyring: Keyring
    sessions: SessionBook
    job_tickets: JobTickets
    audit: AuditLog
    cli_status: CliStatus
    enrollment: EnrollmentService | None
    webhooks: WebhookDispatcher
    guard: OutboundGuard
    models: ModelPolicy
    admin_signins: SignInThrottle
    sampling: StateSampling
    # True when the server runs the real claude CLI (not a runner handed in by a test).
    requires_cli: bool

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The backend's circuit breaker, when it has one."""
        return self.backend.breaker

    async def webhook_state(self, job_id: str) -> dict[str, Any] | None:
        """The delivery state of a job's webhook, as the job view shows it."""
        return delivery_view(await self.store.webhooks.for_job(job_id))

    def check_callback(self, url: str) -> None:
        """Refuse (400) a callback URL the outbound guard would never call."""
        try:
            self.guard.check_url(url)
        except BlockedDestination as exc:
            raise ApiError(
                "invalid_request", f"callback_url is not allowed: {exc}", param="callback_url"
            ) from None

    def shutdown(self) -> None:
        """Stop taking new jobs (the first step of a graceful stop)."""
        self.jobs.begin_shutdown()


def _queue_limits(settings: Settings) -> QueueLimits:
    return QueueLimits(
        concurrency=settings.concurrency,
        queue_size=settings.queue_size,
        max_attempts=settings.max_attempts,
        lease_secs=settings.lease_secs,
        shutdown_grace_secs=settings.shutdown_grace_secs,
        job_ttl_hours=settings.job_ttl_hours,
        cleanup_interval_secs=settings.cleanup_interval_secs,
    )


def _batch_settings(settings: Settings) -> BatchSettings:
    return BatchSettings(
        in_flight=settings.batch_inflight,
        expiry=timedelta(hours=settings.batch_expiry_hours),
        ttl=timedelta(days=settings.batch_ttl_days),
        max_requests=settings.batch_max_requests,
    )


# The batch door's hooks, built from the services (the api layer hands it in: services sit
# below the doors and import none of them).
BatchDoor = Callable[["Services"], BatchHooks]


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, *, runner: Runner | None = None, batch_door: BatchDoor | None = None
) -> AsyncIterator[Services]:
    """Open the store, build the backend, start the queue, webhooks, audit and sampling;
    stop them all again on exit. ``runner`` replaces the backend's runner (tests). With
    ``batch_door`` the Message Batches feeder starts too (and stops before the queue)."""
    async with contextlib.AsyncExitStack() as stack:
        store = await Store.open(settings.database_url)
        stack.push_async_callback(store.close)
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
        shared_breaker = await _shared_breaker(settings, runner, stack)
        backend = build_backend(
            settings, cli_path=cli_status.path, breaker=shared_breaker, runner=runner
        )
        metered = metrics.MeteredRunner(backend.runner, backend.name)
        if backend.passthrough is not None:
            backend.passthrough = metrics.MeteredPassThrough(backend.passthrough, backend.name)
        limiter = Limiter.from_settings(settings)
        stack.push_async_callback(limiter.aclose)
        jobs = JobService(
            store,
            metered,
            _queue_limits(settings),
            hub=JobEventHub(store, notifier_for(settings.redis_url, settings.database_url)),
        )
        guard = OutboundGuard(settings.outbound_allow)
        dispatcher = WebhookDispatcher(store, guard, settings, render_job, jobs.node_id)
        services = Services(
            settings=settings,
            store=store,
            backend=backend,
            runner=metered,
            limiter=limiter,
            jobs=jobs,
            batches=BatchService(store, jobs, _batch_settings(settings)),
            keyring=Keyring(store),
            sessions=SessionBook(store, settings.session_ttl_hours),
            job_tickets=JobTickets(),
            audit=AuditLog(store),
            cli_status=cli_status,
            enrollment=(
                EnrollmentService(store, settings.enrollment_secret, settings.device_token_ttl_secs)
                if settings.enrollment_secret
                else None
            ),
            webhooks=dispatcher,
            guard=guard,
            models=model_policy(
                settings.allowed_models,
                settings.default_model,
                settings.model_aliases,
                full_ids=backend.capabilities.full_model_ids,
            ),
            admin_signins=SignInThrottle(),
            sampling=StateSampling(store, backend),
            requires_cli=runner is None and backend.capabilities.needs_cli,
        )
        _connect(services)
        await services.audit.start()
        stack.push_async_callback(services.audit.stop)
        await jobs.start()
        stack.push_async_callback(dispatcher.stop)
        stack.push_async_callback(jobs.stop)
        await dispatcher.start()
        if batch_door is not None:
            services.batches.use(batch_door(services))
            await services.batches.start()
            stack.push_async_callback(services.batches.stop)  # before jobs.stop: LIFO
        services.sampling.start()
        stack.push_async_callback(services.sampling.stop)
        # Everything built so far lives as long as the server: keep it out of the collector's
        # full passes, which otherwise pause every request for ~100 ms now and then.
        gc.freeze()
        yield services


async def _shared_breaker(
    settings: Settings, runner: Runner | None, stack: contextlib.AsyncExitStack
) -> SharedCircuit | None:
    """With Redis, the API backend's breaker is shared by every node."""
    if runner is not None or not settings.redis_url:
        return None
    if not CAPABILITIES[backend_name(settings)].circuit_breaker:
        return None
    shared = SharedCircuit(
        settings.circuit_failures, settings.circuit_cooldown_secs, settings.redis_url
    )
    await shared.start()
    stack.push_async_callback(shared.stop)
    return shared


def _connect(services: Services) -> None:
    """Hook the observers of a job's end onto the queue."""
    jobs, dispatcher = services.jobs, services.webhooks
    jobs.on_finished.append(lambda job: dispatcher.wake() if job.callback_url else None)
    jobs.in_ending.append(services.sessions.turn_op)
    jobs.cleanups.append(("sessions", services.sessions.delete_expired))
    jobs.cleanups.append(("files", services.store.files.delete_expired))
    jobs.cleanups.append(("responses", services.store.responses.delete_expired))
    jobs.on_finished.append(services.job_tickets.job_finished)
    jobs.on_finished.append(lambda job: metrics.job_finished(job.status.value))
    # A synchronous caller's own audit row carries its job's outcome: one fill at most.
    jobs.on_finished.append(
        lambda job: services.audit.record_job_outcome(job, waited=SYNC_CALLER in job.request)
    )
