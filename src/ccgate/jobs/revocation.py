"""Ending the work of keys that lost their access (a key, device or enrollment revoked).

Their queued and running jobs are cancelled, each closed by its ``result`` event, without a
webhook, and their pending webhook deliveries are dropped: nothing more runs or goes out on
the operator's account for them. A serving node does it through its JobService (subscribers
hear at once, runs on this node stop at once); ``ccgate keys revoke``, which has no queue,
through the store alone (a node running such a job stops it at its next lease renewal).
Serving nodes never claim a job whose key is revoked or expired, and sweep such work away.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from ccgate.clock import utcnow
from ccgate.store import JobRecord, JobStatus, Store

KEY_REVOKED = "the job was cancelled because its key was revoked"
KEY_UNUSABLE = "the job was cancelled because its key was revoked or has expired"
WEBHOOK_DROPPED = "dropped: the job's key was revoked"

Cancel = Callable[[str, str], Awaitable[JobRecord | None]]


async def end_work_of(
    store: Store,
    key_ids: Collection[str],
    *,
    message: str = KEY_REVOKED,
    cancel: Cancel | None = None,
) -> int:
    """Cancel every queued or processing job of ``key_ids`` with ``message`` and drop their
    keys' pending webhook deliveries; return how many jobs were cancelled.

    ``cancel(job_id, message)`` ends one job (the JobService's, which also tells this node's
    subscribers and stops its run here); without it the store alone ends the job.
    """
    if not key_ids:
        return 0
    ended = 0
    for job_id in await store.jobs.unfinished_of(key_ids):
        if cancel is not None:
            record = await cancel(job_id, message)
        else:
            record = await _cancel_in_store(store, job_id, message)
        ended += record is not None
    await store.webhooks.drop_pending(WEBHOOK_DROPPED, list(key_ids))
    return ended


async def _cancel_in_store(store: Store, job_id: str, message: str) -> JobRecord | None:
    ended = await store.jobs.finish(
        job_id,
        JobStatus.CANCELLED,
        now=utcnow(),
        webhook=False,
        error_type="cancelled",
        error_message=message,
    )
    return ended[0] if ended is not None else None
