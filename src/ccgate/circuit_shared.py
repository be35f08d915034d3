"""A circuit breaker whose openings and probe are shared by every node through Redis.

Each node counts its own failures. When one node's breaker opens (or re-opens after a failed
probe) it stores "open until T" in Redis and announces it; every other node opens until T at
once, and a node that starts later reads it. When the cooldown is over, the single probe is
taken across nodes with a Redis lock, so one call in the whole cluster probes the upstream. The
probe's success (or an admin's reset) closes the breaker everywhere.

If Redis cannot be reached the breaker goes on as a local one: it never refuses calls only
because Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from ccgate.circuit import _PROBE_WAIT_SECS, CircuitBreaker, CircuitOpen
from ccgate.notify import read_pubsub

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

log = structlog.get_logger("ccgate.circuit")

CHANNEL = "ccgate:circuit"
STATE_KEY = "ccgate:circuit:open-until"
PROBE_KEY = "ccgate:circuit:probe"
# Deletes the probe lock only while it is still ours.
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


class SharedCircuit(CircuitBreaker):
    """A ``CircuitBreaker`` that opens, probes and closes in step with the other nodes."""

    def __init__(
        self,
        failures: int,
        cooldown_secs: float,
        redis_url: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(failures, cooldown_secs, clock)
        from redis.asyncio import Redis

        self._redis: Redis = Redis.from_url(redis_url)
        self._pubsub: PubSub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._me = secrets.token_hex(8)
        self._holds_probe = False
        self._reader: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[Any]] = set()
        # A probe lock outlives a node that died mid-probe by at most this long.
        self._probe_ttl_ms = int(max(cooldown_secs, 30.0) * 1000)

    async def start(self) -> None:
        """Take the cluster's current opening, then follow the other nodes' announcements."""
        try:
            until = await self._redis.get(STATE_KEY)
            if until is not None:
                self._open_from_wall(float(until))
            await self._pubsub.subscribe(CHANNEL)
        except Exception as exc:
            log.warning("circuit_share_unavailable", error=type(exc).__name__)
            return
        self._reader = asyncio.create_task(self._read(), name="ccgate-circuit-read")

    async def stop(self) -> None:
        """Stop following the other nodes and close the connections."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._sends:
            await asyncio.wait(self._sends, timeout=1.0)
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()

    async def admit(self) -> None:
        """Let a call through or raise CircuitOpen; the half-open probe is one per cluster."""
        probing = self._probing
        self.before_call()
        if probing or not self._probing:
            return
        try:
            taken = await self._redis.set(PROBE_KEY, self._me, nx=True, px=self._probe_ttl_ms)
        except Exception as exc:
            log.warning("circuit_probe_lock_failed", error=type(exc).__name__)
            taken = True  # Redis down: probe as a lone node would
        if not taken:
            self._probing = False
            raise CircuitOpen(_PROBE_WAIT_SECS)
        self._holds_probe = True

    def record_success(self) -> None:
        """Close here and, if it was open, on every node."""
        was_open = self._opened_at is not None
        super().record_success()
        self._drop_probe()
        if was_open:
            self._send(None)

    def record_failure(self, retry_after: float | None = None) -> None:
        """Count a failure here; an opening (or re-opening) is announced to every node."""
        opened_at, open_until = self._opened_at, self._open_until
        super().record_failure(retry_after)
        self._drop_probe()
        if self._opened_at is not None and (
            opened_at != self._opened_at or open_until != self._open_until
        ):
            self._send(time.time() + (self._open_until - self._clock()))

    def release(self) -> None:
        """Free the probe slot here and in the cluster."""
        super().release()
        self._drop_probe()

    # -- following the other nodes -------------------------------------------------------

    def _open_from_wall(self, until_wall: float) -> None:
        remaining = until_wall - time.time()
        if remaining > 0:
            self.hold_open_until(self._clock() + remaining)

    def _heard(self, raw: bytes | str) -> None:
        try:
            message = json.loads(raw)
            sender, until = message["from"], message["open_until"]
        except (ValueError, KeyError, TypeError):
            return
        if sender == self._me:
            return
        if until is None:
            CircuitBreaker.record_success(self)
        else:
            self._open_from_wall(float(until))

    async def _read(self) -> None:
        await read_pubsub(self._pubsub, self._heard, failure_event="circuit_share_read_failed")

    def _send(self, open_until: float | None) -> None:
        task = asyncio.get_running_loop().create_task(self._announce(open_until))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _announce(self, open_until: float | None) -> None:
        try:
            if open_until is None:
                await self._redis.delete(STATE_KEY)
            else:
                ttl_ms = max(1, int((open_until - time.time()) * 1000))
                await self._redis.set(STATE_KEY, repr(open_until), px=ttl_ms)
            await self._redis.publish(
                CHANNEL, json.dumps({"from": self._me, "open_until": open_until})
            )
        except Exception as exc:
            log.warning("circuit_share_failed", error=type(exc).__name__)

    def _drop_probe(self) -> None:
        if not self._holds_probe:
            return
        self._holds_probe = False
        task = asyncio.get_running_loop().create_task(self._unlock())
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _unlock(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.eval(_RELEASE, 1, PROBE_KEY, self._me)
