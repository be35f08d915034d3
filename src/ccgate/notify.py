"""Tell other nodes that a job has new events (or ended), and hear them tell this node.

The event hub of the node running a job hands each event to a ``Notifier`` as it is
published; nodes with subscribers to that job receive it within milliseconds and serve it from
memory. Three implementations, picked by ``notifier_for``:

- ``RedisNotifier`` (CCGATE_REDIS_URL set): Redis pub/sub, one channel per watched job;
- ``PostgresNotifier`` (the store is PostgreSQL and no Redis): ``LISTEN/NOTIFY``, in store/;
- ``PollNotifier`` (SQLite, one node): sends nothing; the hub's store poll is all there is.

Delivery is best effort. A message lost to a reconnect or too big to send is found by the
hub's store poll, which every node keeps running as the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from ccgate.store.events import JobEvent

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

log = structlog.get_logger("ccgate.notify")

# Called with a job id and the events another node published for it; no events: "look in
# the store" (a cancel, or events too big to carry).
Deliver = Callable[[str, list[JobEvent]], None]

REDIS_CHANNEL_PREFIX = "ccgate:events:"


class Notifier(Protocol):
    """Carries "job X has these new events" between nodes."""

    kind: str

    async def start(self, deliver: Deliver) -> None:
        """Connect and begin handing messages from other nodes to ``deliver``."""

    async def stop(self) -> None:
        """Send what is queued and disconnect."""

    def publish(self, job_id: str, events: list[JobEvent]) -> None:
        """Queue the job's new events (none: a hint to read the store) for other nodes."""

    async def watch(self, job_id: str) -> None:
        """Start receiving the job's messages (the first subscriber here arrived)."""

    def unwatch(self, job_id: str) -> None:
        """Stop receiving the job's messages (its last subscriber here left)."""


def encode(job_id: str, events: list[JobEvent]) -> str:
    """One message: the job id and its events, as compact JSON."""
    return json.dumps(
        {"j": job_id, "e": [[e.seq, e.type, e.data, e.at.isoformat()] for e in events]},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def decode(raw: str | bytes) -> tuple[str, list[JobEvent]] | None:
    """The job id and events of a message; None for anything malformed."""
    try:
        message = json.loads(raw)
        job_id = message["j"]
        events = [
            JobEvent(job_id, int(seq), str(type_), dict(data), datetime.fromisoformat(at))
            for seq, type_, data, at in message["e"]
        ]
    except (ValueError, KeyError, TypeError):
        return None
    return (job_id, events) if isinstance(job_id, str) else None


class PollNotifier:
    """No messages at all: subscribers on other nodes rely on the hub's store poll."""

    kind = "poll"

    async def start(self, deliver: Deliver) -> None:
        """Nothing to connect to."""

    async def stop(self) -> None:
        """Nothing to disconnect."""

    def publish(self, job_id: str, events: list[JobEvent]) -> None:
        """Send nothing."""

    async def watch(self, job_id: str) -> None:
        """Nothing to listen to."""

    def unwatch(self, job_id: str) -> None:
        """Nothing to stop."""


class OrderedSender:
    """Sends queued messages one at a time, in order, from one task (never blocking a
    publisher); a failure is logged and the message dropped (the poll finds its events)."""

    def __init__(self, send: Callable[[list[tuple[str, list[JobEvent]]]], Any], name: str) -> None:
        self._send = send
        self._name = name
        self._queue: asyncio.Queue[tuple[str, list[JobEvent]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the sending task."""
        self._task = asyncio.create_task(self._run(), name=self._name)

    def put(self, job_id: str, events: list[JobEvent]) -> None:
        """Queue one message."""
        self._queue.put_nowait((job_id, events))

    async def stop(self) -> None:
        """Send what is queued (briefly), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), 1.0)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._send(batch)
            except Exception as exc:
                log.warning("notify_send_failed", error=type(exc).__name__)
            finally:
                for _ in batch:
                    self._queue.task_done()


class RedisNotifier:
    """Redis pub/sub: a channel per job, subscribed only while this node watches the job."""

    kind = "redis"

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        self._redis: Redis = Redis.from_url(url)
        self._pubsub: PubSub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._sender = OrderedSender(self._send, "ccgate-notify-redis-send")
        self._reader: asyncio.Task[None] | None = None
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        """Subscribe to the node's always-on channel and start reading and sending."""
        self._deliver = deliver
        # Always subscribed to something, so the reader never spins on an idle connection.
        await self._pubsub.subscribe(REDIS_CHANNEL_PREFIX.rstrip(":"))
        self._reader = asyncio.create_task(self._read(), name="ccgate-notify-redis-read")
        self._sender.start()

    async def stop(self) -> None:
        """Send what is queued, stop reading and close the connections."""
        await self._sender.stop()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()

    def publish(self, job_id: str, events: list[JobEvent]) -> None:
        """Queue the job's events for its channel."""
        self._sender.put(job_id, events)

    async def watch(self, job_id: str) -> None:
        """Subscribe to the job's channel."""
        try:
            await self._pubsub.subscribe(REDIS_CHANNEL_PREFIX + job_id)
        except Exception as exc:
            log.warning("notify_watch_failed", error=type(exc).__name__)

    def unwatch(self, job_id: str) -> None:
        """Unsubscribe from the job's channel (in the background)."""
        task = asyncio.get_running_loop().create_task(self._unsubscribe(job_id))
        task.add_done_callback(_ignore_outcome)

    async def _unsubscribe(self, job_id: str) -> None:
        await self._pubsub.unsubscribe(REDIS_CHANNEL_PREFIX + job_id)

    async def _send(self, batch: list[tuple[str, list[JobEvent]]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id, events in batch:
                pipe.publish(REDIS_CHANNEL_PREFIX + job_id, encode(job_id, events))
            await pipe.execute()

    async def _read(self) -> None:
        await read_pubsub(self._pubsub, self._heard, failure_event="notify_read_failed")

    def _heard(self, data: Any) -> None:
        decoded = decode(data)
        if decoded is not None and self._deliver is not None:
            self._deliver(*decoded)


async def read_pubsub(pubsub: Any, on_data: Callable[[Any], None], *, failure_event: str) -> None:
    """Hand each message's data on a Redis pub/sub connection to ``on_data``, until cancelled;
    a failed read is logged as ``failure_event`` and retried a second later."""
    while True:
        try:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(failure_event, error=type(exc).__name__)
            await asyncio.sleep(1.0)
            continue
        if message is not None and message.get("type") == "message":
            on_data(message["data"])


def _ignore_outcome(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("notify_unwatch_failed", error=type(task.exception()).__name__)


def notifier_for(redis_url: str | None, database_url: str) -> Notifier:
    """Redis when configured, else PostgreSQL LISTEN/NOTIFY on a PostgreSQL store, else none."""
    if redis_url:
        return RedisNotifier(redis_url)
    if database_url.startswith(("postgresql", "postgres:")):
        from ccgate.store.listen import PostgresNotifier

        return PostgresNotifier(database_url)
    return PollNotifier()
