"""Where limit state lives: in this process's memory, or in Redis shared by every node.

Request windows use the ``limits`` library's storage. The quota counters (tokens, micro-dollars)
and the running-request slots are ours: ``limits`` has no way to give a unit back.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from typing import TYPE_CHECKING, Any, Protocol

from limits.aio.storage import MemoryStorage, RedisStorage, Storage

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

# Expired memory counters are swept at most this often.
_PRUNE_INTERVAL_SECS = 60.0

_ADD = """
local value = redis.call('incrby', KEYS[1], ARGV[1])
if redis.call('ttl', KEYS[1]) < 0 then redis.call('expire', KEYS[1], ARGV[2]) end
return value
"""
# Running slots are a sorted set: one member per slot, scored with the time it expires. A
# crashed node's slots thus vanish ``ttl`` after they were taken however busy the key is, and a
# release removes its own member only, so a late or repeated release can never free another's.
# ARGV[1] < 0 means "no limit": the slot is still counted, for usage reports.
_ACQUIRE = """
local now = tonumber(ARGV[3])
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
local limit = tonumber(ARGV[1])
if limit >= 0 and redis.call('zcard', KEYS[1]) >= limit then return 0 end
redis.call('zadd', KEYS[1], now + tonumber(ARGV[2]), ARGV[4])
redis.call('expire', KEYS[1], math.ceil(tonumber(ARGV[2])))
return 1
"""


class Counters(Protocol):
    """Integer counters with an expiry, and bounded running-request slots."""

    async def get(self, key: str) -> int:
        """The counter's value; 0 when absent or expired."""

    async def add(self, key: str, amount: int, ttl_secs: float) -> int:
        """Add ``amount``; a new counter expires ``ttl_secs`` later. Returns the new value."""

    async def acquire(self, key: str, limit: int | None, ttl_secs: float) -> str | None:
        """Take a running slot unless ``limit`` are taken; the token to release it, or None."""

    async def release(self, key: str, token: str) -> None:
        """Give back the slot taken with ``token``; nothing when it is gone already."""

    async def running(self, key: str) -> int:
        """How many slots are taken."""

    async def aclose(self) -> None:
        """Drop connections."""


class MemoryCounters:
    """Counters of this process only; running-request slots die with it, so need no expiry."""

    def __init__(self) -> None:
        self._values: dict[str, int] = {}
        self._slots: dict[str, int] = {}
        self._expires: dict[str, float] = {}
        self._next_prune = 0.0

    def _live(self, key: str, now: float) -> int:
        expires = self._expires.get(key)
        if expires is not None and expires <= now:
            self._values.pop(key, None)
            self._expires.pop(key, None)
        return self._values.get(key, 0)

    def _prune(self, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + _PRUNE_INTERVAL_SECS
        for key in [k for k, at in self._expires.items() if at <= now]:
            self._values.pop(key, None)
            self._expires.pop(key, None)

    async def get(self, key: str) -> int:
        """The counter's value; 0 when absent or expired."""
        return self._live(key, time.time())

    async def add(self, key: str, amount: int, ttl_secs: float) -> int:
        """Add ``amount``; a new counter expires ``ttl_secs`` later. Returns the new value."""
        now = time.time()
        self._prune(now)
        value = self._live(key, now) + amount
        self._expires.setdefault(key, now + ttl_secs)
        self._values[key] = value
        return value

    async def acquire(self, key: str, limit: int | None, ttl_secs: float) -> str | None:
        """Take a running slot unless ``limit`` are taken; the token to release it, or None."""
        running = self._slots.get(key, 0)
        if limit is not None and running >= limit:
            return None
        self._slots[key] = running + 1
        return ""

    async def release(self, key: str, token: str) -> None:
        """Give back a slot (never below zero)."""
        running = self._slots.get(key, 0) - 1
        if running > 0:
            self._slots[key] = running
        else:
            self._slots.pop(key, None)

    async def running(self, key: str) -> int:
        """How many slots are taken."""
        return self._slots.get(key, 0)

    async def aclose(self) -> None:
        """Nothing to close."""


class RedisCounters:
    """Counters in Redis, each change one atomic script; keys start with ``prefix:``."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._add: AsyncScript = client.register_script(_ADD)
        self._acquire: AsyncScript = client.register_script(_ACQUIRE)

    def _key(self, key: str) -> str:
        return f"{self.prefix}:{key}"

    async def get(self, key: str) -> int:
        """The counter's value; 0 when absent or expired."""
        return int(await self.client.get(self._key(key)) or 0)

    async def add(self, key: str, amount: int, ttl_secs: float) -> int:
        """Add ``amount``; a new counter expires ``ttl_secs`` later. Returns the new value."""
        value = await self._add(keys=[self._key(key)], args=[amount, _whole(ttl_secs)])
        return int(value)

    async def acquire(self, key: str, limit: int | None, ttl_secs: float) -> str | None:
        """Take a running slot unless ``limit`` are taken; the token to release it, or None.

        The slot expires by itself ``ttl_secs`` later, in case its node dies holding it.
        """
        token = secrets.token_hex(8)
        taken = await self._acquire(
            keys=[self._key(key)],
            args=[-1 if limit is None else limit, ttl_secs, time.time(), token])
        return token if int(taken) else None

    async def release(self, key: str, token: str) -> None:
        """Give back the slot taken with ``token``; nothing when it expired already."""
        await self.client.zrem(self._key(key), token)

    async def running(self, key: str) -> int:
        """How many slots are taken and not expired."""
        return int(await self.client.zcount(self._key(key), f"({time.time()}", "+inf"))

    async def aclose(self) -> None:
        """Close the connection pool (shared with the window storage)."""
        await self.client.aclose()


def _whole(secs: float) -> int:
    return max(1, math.ceil(secs))


def redis_urls(url: str) -> tuple[str, str]:
    """The redis-py URL and the ``limits`` storage URI for an operator's Redis URL.

    Accepts ``redis://``, ``rediss://`` (TLS) and ``unix://`` (also with ``async+`` in front,
    the ``limits`` spelling). The error never echoes the URL: it may hold a password.
    """
    scheme, sep, rest = url.strip().removeprefix("async+").partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in {"redis", "rediss", "unix", "redis+unix"}:
        raise ValueError("CCGATE_REDIS_URL must be a redis://, rediss:// or unix:// URL")
    if scheme in {"unix", "redis+unix"}:
        return f"unix://{rest}", f"async+redis+unix://{rest}"
    return f"{scheme}://{rest}", f"async+{scheme}://{rest}"


def open_storage(redis_url: str | None, prefix: str) -> tuple[Storage, Counters]:
    """Window storage and counters: in memory when ``redis_url`` is empty, else in Redis
    (redis-py, one connection pool for both)."""
    if not redis_url:
        return MemoryStorage(), MemoryCounters()
    client_url, storage_uri = redis_urls(redis_url)
    try:
        from redis.asyncio import Redis
    except ImportError as exc:  # pragma: no cover - the [redis] extra is missing
        raise RuntimeError("CCGATE_REDIS_URL needs the [redis] extra: "
                           "pip install 'ccgate[redis]'") from exc
    client: Redis = Redis.from_url(client_url)
    # limits types its options as scalars; a connection pool is what its redis-py bridge takes.
    shared: dict[str, Any] = {"connection_pool": client.connection_pool}
    storage = RedisStorage(storage_uri, implementation="redispy", key_prefix=f"{prefix}:win",
                           **shared)
    return storage, RedisCounters(client, prefix)


async def close_storage(storage: Storage) -> None:
    """Stop the memory storage's expiry task (Redis connections close with the counters)."""
    timer = storage.timer if isinstance(storage, MemoryStorage) else None
    if timer is not None and not timer.done():
        timer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timer
