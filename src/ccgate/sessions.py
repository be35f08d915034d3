"""Sessions: a native job may continue the conversation of an earlier job of the same key.

ccgate keeps the conversation itself (in the store, so it survives restarts and is shared by
every node); each continued run hands the earlier turns to the runner as ``history`` (the CLI
runner replays them through ``--resume`` of a transcript it writes for that run alone).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ccgate.clock import utcnow
from ccgate.ids import new_id
from ccgate.jobs.requests import request_from_json
from ccgate.store import JobRecord, JobStatus, SessionRecord, Store
from ccgate.store.engine import Operation
from ccgate.store.sessions import save_session


class SessionBook:
    """Looks sessions up for new jobs and records each completed turn."""

    def __init__(self, store: Store, ttl_hours: float) -> None:
        self.store = store
        self.ttl = timedelta(hours=ttl_hours)

    @staticmethod
    def new_id() -> str:
        """A fresh, unguessable session id."""
        return new_id("ses")

    async def find(self, session_id: str, key_id: str | None) -> SessionRecord | None:
        """The key's live session by that id, or None (unknown, expired or another key's)."""
        return await self.store.sessions.get(session_id, key_id=key_id, now=utcnow())

    async def record_turn(self, job: JobRecord) -> None:
        """After a completed job with a session: store its question and answer as turns."""
        operation = self.turn_op(job)
        if operation is not None:
            await self.store.db.write(operation)

    def turn_op(self, job: JobRecord) -> Operation[None] | None:
        """The store operation saving a completed job's question and answer as its session's
        turns (None: nothing to save); JobService runs it in the transaction ending the job."""
        if job.session_id is None or job.status is not JobStatus.COMPLETED:
            return None
        request = request_from_json(job.request)
        messages: list[dict[str, Any]] = [
            *request.history,
            {"role": "user", "content": request.content},
            {"role": "assistant", "content": [{"type": "text", "text": job.result or ""}]},
        ]
        now = utcnow()
        return save_session(
            session_id=job.session_id,
            key_id=job.key_id,
            model=job.model,
            system_prompt=request.system_prompt,
            messages=messages,
            now=now,
            expires_at=now + self.ttl,
        )

    async def delete_expired(self, now: Any) -> int:
        """Delete sessions not continued within the TTL."""
        return await self.store.sessions.delete_expired(now)
