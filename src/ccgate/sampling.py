"""Samples the queue, circuit, pool and plan windows into the metrics every few seconds (and
before each scrape), so every worker's gauges stay fresh between scrapes."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog

from ccgate import metrics
from ccgate.clock import utcnow
from ccgate.store import JobStatus, Store

if TYPE_CHECKING:
    from ccgate.runners.backend import Backend

log = structlog.get_logger("ccgate.metrics")

SAMPLE_INTERVAL_SECS = 5.0


class StateSampling:
    """Copies the backend's and the store's state into the gauges."""

    def __init__(self, store: Store, backend: Backend) -> None:
        self.store = store
        self.backend = backend
        self.sampler = metrics.StateSampler()
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        """Copy the current state into the gauges; a store error leaves the depth as it was."""
        breaker = self.backend.breaker
        self.sampler.sample_circuit(breaker.snapshot()["state"] if breaker is not None else None)
        pool = getattr(self.backend.runner, "pool", None)
        self.sampler.sample_pool(pool.stats() if pool is not None else None)
        try:
            self.sampler.sample_queue(await self.store.jobs.count(JobStatus.QUEUED))
            self.sampler.sample_plan_windows(await self.store.plan_windows.all(), utcnow())
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
