"""Fan-out of job events to live subscribers, with replay from the store.

Each event gets the next id of its job (the SSE ``id:``). Events of jobs running on this node
are kept in memory while the job runs and written to the store in batches (every ~100 ms and
when the job ends), so a subscriber who arrives late, reconnects with ``Last-Event-ID``, or
sits on another node replays exactly what it missed.

Each event is also handed to the notifier (Redis pub/sub or PostgreSQL NOTIFY), so a node whose
clients watch a job running elsewhere gets its events within milliseconds and serves them from
memory. One shared store poller (not one query per stream) remains as the fallback for messages
lost or too big to carry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from ccgate.clock import utcnow
from ccgate.notify import Notifier, PollNotifier
from ccgate.store import Store
from ccgate.store.events import JobEvent

log = structlog.get_logger("ccgate.events")

_FLUSH_SECS = 0.1
_POLL_SECS = 1.0
_KEEP_ENDED_SECS = 30.0
# Events heard from other nodes kept per watched job (older ones are read from the store).
_REMOTE_KEEP = 2000


@dataclass
class _LiveJob:
    """The in-memory stream of a job running here."""

    job_id: str
    next_seq: int
    events: list[JobEvent] = field(default_factory=list)
    unflushed: list[JobEvent] = field(default_factory=list)
    sealed: bool = False
    ended: bool = False

    @property
    def first_seq(self) -> int:
        return self.events[0].seq if self.events else self.next_seq


class JobEventHub:
    """Publishes job events and serves subscriptions to them."""

    def __init__(self, store: Store, notifier: Notifier | None = None) -> None:
        self.store = store
        self.notifier: Notifier = notifier or PollNotifier()
        self._remote: dict[str, dict[int, JobEvent]] = {}
        self._live: dict[str, _LiveJob] = {}
        self._signals: dict[str, asyncio.Event] = {}
        self._watch_counts: dict[str, int] = {}
        self._known_seq: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.closing = False

    def close_streams(self) -> None:
        """End every subscription (shutdown): clients resume elsewhere with Last-Event-ID."""
        self.closing = True
        for job_id in list(self._signals):
            self._signal(job_id)

    async def start(self) -> None:
        """Start the notifier, the batch writer and the poller for jobs running elsewhere."""
        await self.notifier.start(self._heard)
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="ccgate-events-flush"),
            asyncio.create_task(self._poll_loop(), name="ccgate-events-poll"),
        ]

    async def stop(self) -> None:
        """Write what is pending and stop the background tasks."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._flush_all()
        await self.notifier.stop()

    # -- publishing (the job service) --------------------------------------------------

    def begin(self, job_id: str, *, next_seq: int) -> None:
        """Open the live stream of a job that starts running here, its first event taking
        ``next_seq`` (ids stay increasing across attempts, so a resuming client never meets
        an id twice)."""
        self._live[job_id] = _LiveJob(job_id, next_seq=next_seq)

    def publish(self, job_id: str, type_: str, data: dict[str, Any]) -> JobEvent | None:
        """Add an event to a running job's stream; None once the stream is sealed."""
        live = self._live.get(job_id)
        if live is None or live.sealed:
            return None
        event = JobEvent(job_id, live.next_seq, type_, data, utcnow())
        live.next_seq += 1
        live.events.append(event)
        live.unflushed.append(event)
        self._signal(job_id)
        self.notifier.publish(job_id, [event])
        return event

    def seal(self, job_id: str) -> tuple[list[JobEvent], int | None]:
        """Stop accepting events for the job. Return those not yet written, for the caller to
        store in the transaction that ends the job, and the id its closing event must take
        (None when the job does not run here: the store picks the next free id)."""
        live = self._live.get(job_id)
        if live is None:
            return [], None
        live.sealed = True
        pending, live.unflushed = live.unflushed, []
        return pending, live.next_seq

    def end(self, job_id: str, closing: JobEvent | None) -> None:
        """Record the job's closing event (already stored) and let subscribers finish."""
        live = self._live.get(job_id)
        if live is not None:
            if closing is not None:
                live.events.append(closing)
            live.ended = True
            asyncio.get_running_loop().call_later(_KEEP_ENDED_SECS, self._drop, job_id, live)
        self._signal(job_id)
        self.notifier.publish(job_id, [closing] if closing is not None else [])

    def _drop(self, job_id: str, live: _LiveJob) -> None:
        if self._live.get(job_id) is live:
            del self._live[job_id]

    def notify(self, job_id: str) -> None:
        """Wake subscribers of a job whose events changed in the store (e.g. a cancel), here
        and on other nodes."""
        self._signal(job_id)
        self.notifier.publish(job_id, [])

    def _heard(self, job_id: str, events: list[JobEvent]) -> None:
        """Events another node published: keep them for this node's subscribers and wake them."""
        if job_id not in self._watch_counts or job_id in self._live:
            return  # nobody here watches it, or it runs here (our own message echoed back)
        if events:
            kept = self._remote.setdefault(job_id, {})
            for event in events:
                kept[event.seq] = event
            while len(kept) > _REMOTE_KEEP:
                del kept[min(kept)]
        self._signal(job_id)

    def changed(self, job_id: str) -> asyncio.Event:
        """An event set at the job's next change (a publish here, a message from another
        node, a store change seen by the poll, shutdown); take it before looking."""
        return self._signals.setdefault(job_id, asyncio.Event())

    @contextlib.asynccontextmanager
    async def watching(self, job_id: str) -> AsyncIterator[None]:
        """Count a watcher of the job while the block runs: the notifier delivers its events
        here and the poller looks at it."""
        count = self._watch_counts.get(job_id, 0)
        self._watch_counts[job_id] = count + 1
        if count == 0:
            await self.notifier.watch(job_id)
        try:
            yield
        finally:
            count = self._watch_counts.pop(job_id, 1) - 1
            if count > 0:
                self._watch_counts[job_id] = count
            else:
                self._known_seq.pop(job_id, None)
                self._remote.pop(job_id, None)
                self.notifier.unwatch(job_id)

    def _signal(self, job_id: str) -> None:
        signal = self._signals.pop(job_id, None)
        if signal is not None:
            signal.set()

    # -- subscribing (the SSE door) ----------------------------------------------------

    async def subscribe(
        self, job_id: str, after: int = 0, heartbeat_secs: float = 15.0
    ) -> AsyncIterator[JobEvent | None]:
        """Yield the job's events with ids above ``after`` until its ``result`` event;
        yield None whenever ``heartbeat_secs`` pass without one."""
        last = after
        async with self.watching(job_id):
            while not self.closing:
                signal = self.changed(job_id)
                batch = await self._events_after(job_id, last)
                for event in batch:
                    yield event
                    last = event.seq
                    if event.type == "result":
                        return
                if batch:
                    continue
                # Nothing new: sleep until a publish, a store change seen by the poller, or
                # the heartbeat. Heartbeats alone do not touch the store.
                while not self.closing:
                    try:
                        await asyncio.wait_for(signal.wait(), heartbeat_secs)
                        break
                    except TimeoutError:
                        yield None

    async def _events_after(self, job_id: str, last: int) -> list[JobEvent]:
        live = self._live.get(job_id)
        if live is not None and live.first_seq <= last + 1:
            return live.events[last + 1 - live.first_seq :]
        heard = self._remote.get(job_id, {})
        if last + 1 in heard:  # the next events came from their node: no query
            return _run_from(heard, last + 1)
        stored = await self.store.events.after(job_id, last)
        seen = stored[-1].seq if stored else last
        # The store lags the running node by up to one batch: add what was heard since.
        return stored + _run_from(heard, seen + 1) if seen + 1 in heard else stored

    # -- background ----------------------------------------------------------------------

    async def _flush_all(self) -> None:
        batch: list[JobEvent] = []
        for live in self._live.values():
            batch.extend(live.unflushed)
            live.unflushed = []
        if batch:
            await self.store.events.append(batch)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_SECS)
            try:
                await self._flush_all()
            except Exception:
                log.exception("event_flush_failed")

    async def _poll_loop(self) -> None:
        """Wake subscribers of jobs not running here when the store shows new events."""
        while True:
            await asyncio.sleep(_POLL_SECS)
            watched = [j for j in self._watch_counts if j not in self._live]
            if not watched:
                continue
            try:
                latest = await self.store.events.last_seq(watched)
            except Exception:
                log.exception("event_poll_failed")
                continue
            for job_id, seq in latest.items():
                if seq != self._known_seq.get(job_id):
                    self._known_seq[job_id] = seq
                    self._signal(job_id)


def _run_from(heard: dict[int, JobEvent], seq: int) -> list[JobEvent]:
    """The heard events with ids ``seq``, ``seq + 1``, ... up to the first gap."""
    run = []
    while seq in heard:
        run.append(heard[seq])
        seq += 1
    return run
