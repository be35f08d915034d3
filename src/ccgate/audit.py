"""The audit log: rows are handed over without waiting and written in batches."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from ccgate.store import AuditEntry, JobRecord, Store

log = structlog.get_logger("ccgate.audit")

_BATCH_SECS = 0.05
_MAX_BUFFER = 10_000
_OUTCOME_TRIES = 40  # x _BATCH_SECS: about two seconds


class AuditLog:
    """Buffers audit rows and writes them in one transaction every few milliseconds, so a
    request never waits for its own audit write."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._buffer: list[AuditEntry] = []
        self._outcomes: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def record(self, entry: AuditEntry) -> None:
        """Queue one row; if the store falls far behind, the oldest rows are dropped."""
        if len(self._buffer) >= _MAX_BUFFER:
            del self._buffer[0]
            log.warning("audit_buffer_full")
        self._buffer.append(entry)
        self._wake.set()

    def record_job_outcome(self, job: JobRecord, *, waited: bool = False) -> None:
        """JobService.on_finished hook: complete the row of the request that queued ``job``
        with its status, tokens and cost (written after the rows of the same batch).

        ``waited``: the request waited for the job and its row holds the outcome already
        (filled here only if it has none, e.g. a 503 at shutdown); its row is in the same
        batch, so a row not found is not looked for again."""
        usage = job.usage or {}
        self._outcomes.append(
            {
                "job_id": job.id,
                "job_status": job.status.value,
                "model": job.model,
                "input_tokens": usage.get("input_tokens"),
                "output_tokens": usage.get("output_tokens"),
                "cost_usd": job.cost_usd,
                "error_type": job.error_type,
                **({"tries": _OUTCOME_TRIES} if waited else {}),
            }
        )
        self._wake.set()

    async def flush(self) -> None:
        """Write every queued row now, then the job outcomes."""
        batch, self._buffer = self._buffer, []
        outcomes, self._outcomes = self._outcomes, []
        if batch and outcomes:
            # A waiting caller's row written in this batch with its job's outcome needs no
            # fill: the update would change nothing.
            done = {e.job_id for e in batch if e.job_id is not None and e.job_status is not None}
            outcomes = [
                o for o in outcomes if o["job_id"] not in done or o.get("tries", 0) < _OUTCOME_TRIES
            ]
        # Failures are logged by type and request id only: a database error's text quotes
        # the statement's parameters, which hold key names, addresses and prompt text.
        if batch:
            try:
                refused = await self.store.audit.append_many(batch)
            except Exception as exc:
                log.error("audit_write_failed", rows=len(batch), error=type(exc).__name__)
            else:
                for request_id in refused:
                    log.error("audit_row_refused", request_id=request_id)
        if outcomes:
            try:
                missing = set(
                    await self.store.audit.fill_job_outcomes(
                        [{k: v for k, v in o.items() if k != "tries"} for o in outcomes]
                    )
                )
            except Exception as exc:
                log.error("audit_outcomes_failed", rows=len(outcomes), error=type(exc).__name__)
                return
            # A job can end before the row of the request that queued it is written: retry
            # those a few batches later.
            for outcome in outcomes:
                if outcome["job_id"] in missing and outcome.get("tries", 0) < _OUTCOME_TRIES:
                    self._outcomes.append({**outcome, "tries": outcome.get("tries", 0) + 1})
                    self._wake.set()

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
