"""PostgreSQL ``LISTEN/NOTIFY`` between nodes sharing one database: the notifier used when no
Redis is configured. One connection listens (a channel per watched job), one sends."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from sqlalchemy.engine import make_url

from ccgate.notify import Deliver, OrderedSender, decode, encode
from ccgate.store.events import JobEvent

log = structlog.get_logger("ccgate.notify")

# NOTIFY payloads must stay under 8000 bytes; bigger events go as a bare "look in the store".
_MAX_PAYLOAD_BYTES = 7900
_CHANNEL_PREFIX = "ccgate_events_"


def asyncpg_dsn(database_url: str) -> str:
    """``database_url`` as the plain ``postgresql://`` DSN asyncpg connects to."""
    parsed = make_url(database_url.replace("postgres://", "postgresql://", 1))
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def channel_of(job_id: str) -> str:
    """The job's channel (an identifier under PostgreSQL's 63-byte limit)."""
    return (_CHANNEL_PREFIX + job_id)[:63]


class PostgresNotifier:
    """``LISTEN/NOTIFY``: a channel per job, listened to only while this node watches it."""

    kind = "postgresql"

    def __init__(self, database_url: str) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._listener: Any = None
        self._speaker: Any = None
        self._deliver: Deliver | None = None
        self._sender = OrderedSender(self._send, "ccgate-notify-pg-send")
        self._watch_lock = asyncio.Lock()

    async def start(self, deliver: Deliver) -> None:
        """Open the listening and the sending connection."""
        import asyncpg  # type: ignore[import-untyped]

        self._deliver = deliver
        self._listener = await asyncpg.connect(self._dsn)
        self._speaker = await asyncpg.connect(self._dsn)
        self._sender.start()

    async def stop(self) -> None:
        """Send what is queued and close both connections."""
        await self._sender.stop()
        for conn in (self._listener, self._speaker):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    def publish(self, job_id: str, events: list[JobEvent]) -> None:
        """Queue the job's events for its channel."""
        self._sender.put(job_id, events)

    async def watch(self, job_id: str) -> None:
        """``LISTEN`` on the job's channel."""
        try:
            async with self._watch_lock:
                await self._listener.add_listener(channel_of(job_id), self._heard)
        except Exception as exc:
            log.warning("notify_watch_failed", error=type(exc).__name__)

    def unwatch(self, job_id: str) -> None:
        """``UNLISTEN`` the job's channel (in the background)."""
        task = asyncio.get_running_loop().create_task(self._unlisten(job_id))
        task.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def _unlisten(self, job_id: str) -> None:
        async with self._watch_lock:
            await self._listener.remove_listener(channel_of(job_id), self._heard)

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        decoded = decode(payload)
        if decoded is not None and self._deliver is not None:
            self._deliver(*decoded)

    async def _send(self, batch: list[tuple[str, list[JobEvent]]]) -> None:
        for job_id, events in batch:
            for payload in _payloads(job_id, events):
                await self._speaker.execute("SELECT pg_notify($1, $2)", channel_of(job_id), payload)


def _payloads(job_id: str, events: list[JobEvent]) -> list[str]:
    """The messages carrying ``events``: all in one when it fits, else one per event; an event
    too big on its own becomes a bare hint (the receiver reads the store)."""
    whole = encode(job_id, events)
    if len(whole.encode()) <= _MAX_PAYLOAD_BYTES:
        return [whole]
    out = []
    for event in events:
        one = encode(job_id, [event])
        out.append(one if len(one.encode()) <= _MAX_PAYLOAD_BYTES else encode(job_id, []))
    return out
