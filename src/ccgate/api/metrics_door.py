"""``GET /metrics``: the Prometheus text format, for loopback, allowed networks or a token."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ccgate import metrics
from ccgate.api.auth import presented_secret
from ccgate.clock import utcnow
from ccgate.errors import ApiError
from ccgate.store import JobStatus

log = structlog.get_logger("ccgate.metrics")
router = APIRouter(tags=["metrics"])

SAMPLE_INTERVAL_SECS = 5.0


def metrics_allowed(request: Request) -> bool:
    """True for a loopback or CCGATE_METRICS_ALLOW_CIDRS socket address, or the right
    CCGATE_METRICS_TOKEN; X-Forwarded-For never counts, whatever CCGATE_TRUSTED_PROXIES says."""
    settings = request.app.state.settings
    token: str | None = settings.metrics_token
    presented = presented_secret(request)
    if (
        token is not None
        and presented is not None
        and hmac.compare_digest(presented.encode(), token.encode())
    ):
        return True
    peer = request.scope.get("client")
    try:
        address = ipaddress.ip_address(peer[0]) if peer else None
    except ValueError:
        return False
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return True
    return any(address in ipaddress.ip_network(cidr) for cidr in settings.metrics_allow_cidrs)


@router.get(
    "/metrics",
    summary="Prometheus metrics (loopback, allowed networks or a token)",
    response_class=Response,
)
async def metrics_page(request: Request) -> Response:
    """Every metric family in the Prometheus text format (docs/metrics.md); 403 unless the
    socket address is loopback or in CCGATE_METRICS_ALLOW_CIDRS, or the bearer token is
    CCGATE_METRICS_TOKEN."""
    if not metrics_allowed(request):
        raise ApiError(
            "forbidden",
            "this address may not read /metrics (allow it with "
            "CCGATE_METRICS_ALLOW_CIDRS or send CCGATE_METRICS_TOKEN as a bearer)",
        )
    sampler: StateSampling | None = getattr(request.app.state, "metrics_sampling", None)
    if sampler is not None:
        await sampler.sample()
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


class StateSampling:
    """Samples the app's queue, circuit and pool into the metrics every few seconds (and
    before each scrape), so every worker's values stay fresh between scrapes."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.sampler = metrics.StateSampler()
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        """Copy the current state into the gauges; a store error leaves the depth as it was."""
        breaker = getattr(self.state, "breaker", None)
        self.sampler.sample_circuit(breaker.snapshot()["state"] if breaker is not None else None)
        pool = getattr(getattr(self.state, "runner", None), "pool", None)
        self.sampler.sample_pool(pool.stats() if pool is not None else None)
        try:
            self.sampler.sample_queue(await self.state.store.jobs.count(JobStatus.QUEUED))
            self.sampler.sample_plan_windows(await self.state.store.plan_windows.all(), utcnow())
        except Exception as exc:
            log.warning("metrics_store_state_unavailable", error=type(exc).__name__)

    def start(self) -> None:
        """Sample now and then every SAMPLE_INTERVAL_SECS until ``stop``."""
        self._task = asyncio.create_task(self._loop(), name="ccgate-metrics")

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(SAMPLE_INTERVAL_SECS)
