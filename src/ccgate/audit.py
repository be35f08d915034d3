"""The audit log: rows are handed over without waiting and written in batches."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from ccgate.store import AuditEntry, Store

log = structlog.get_logger("ccgate.audit")

_BATCH_SECS = 0.05
_MAX_BUFFER = 10_000


class AuditLog:
    """Buffers audit rows and writes them in one transaction every few milliseconds, so a
    request never waits for its own audit write."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._buffer: list[AuditEntry] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def record(self, entry: AuditEntry) -> None:
        """Queue one row; if the store falls far behind, the oldest rows are dropped."""
        if len(self._buffer) >= _MAX_BUFFER:
            del self._buffer[0]
            log.warning("audit_buffer_full")
        self._buffer.append(entry)
        self._wake.set()

    async def flush(self) -> None:
        """Write every queued row now."""
        batch, self._buffer = self._buffer, []
        if batch:
            try:
                await self.store.audit.append_many(batch)
            except Exception:
                log.exception("audit_write_failed", rows=len(batch))

    async def start(self) -> None:
        """Start the batch writer."""
        self._task = asyncio.create_task(self._run(), name="ccgate-audit")

    async def stop(self) -> None:
        """Write what is left and stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(_BATCH_SECS)
            await self.flush()
