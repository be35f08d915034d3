"""Where limit state lives: in this process's memory, or in Redis shared by every node.

Request windows use the ``limits`` library's storage. The quota counters (tokens, micro-dollars),
the reservations running requests hold against them, and the running-request slots are ours:
``limits`` has no way to give a unit back.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from limits.aio.storage import MemoryStorage, RedisStorage, Storage

from ccgate.clock import timestamp

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
# Reservations are a sorted set per quota: one member "<token>:<amount>" per running request,
# scored with the time it expires (like slots). Every quota is tested first, then all are
# reserved, in one script, so no two nodes can both take the last of a budget.
# KEYS: per quota its spent counter and its reservation set. ARGV: now, ttl, token, then per
# quota its limit and amount. Returns the refusing quota's number (0: reserved), then per quota
# what was spent and what others held.
_RESERVE = """
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local quotas = #KEYS / 2
local refused = 0
local out = {}
for i = 1, quotas do
  local spent = tonumber(redis.call('get', KEYS[2 * i - 1]) or '0')
  redis.call('zremrangebyscore', KEYS[2 * i], '-inf', now)
  local held = 0
  for _, member in ipairs(redis.call('zrange', KEYS[2 * i], 0, -1)) do
    held = held + tonumber(string.match(member, ':(%d+)$'))
  end
  local limit = tonumber(ARGV[2 + 2 * i])
  local amount = tonumber(ARGV[3 + 2 * i])
  if refused == 0 and (spent >= limit or (held > 0 and spent + held + amount > limit)) then
    refused = i
  end
  out[2 * i - 1] = spent
  out[2 * i] = held
end
if refused == 0 then
  for i = 1, quotas do
    redis.call('zadd', KEYS[2 * i], now + ttl, ARGV[3] .. ':' .. ARGV[3 + 2 * i])
    redis.call('expire', KEYS[2 * i], math.ceil(ttl))
  end
end
table.insert(out, 1, refused)
return out
"""
# Settling drops a request's reservations and adds what it really spent, in one step, so the
# spend is never counted twice nor missing. KEYS: the reservation sets, then the counters.
# ARGV: how many sets, each set's member, then per counter its amount and ttl.
_SETTLE = """
local sets = tonumber(ARGV[1])
for i = 1, sets do redis.call('zrem', KEYS[i], ARGV[1 + i]) end
for j = sets + 1, #KEYS do
  local at = 1 + sets + 2 * (j - sets) - 1
  redis.call('incrby', KEYS[j], ARGV[at])
  if redis.call('ttl', KEYS[j]) < 0 then redis.call('expire', KEYS[j], ARGV[at + 1]) end
end
return 1
"""


@dataclass(frozen=True)
class Quota:
    """A spend limit one request reserves against: the counter of what was spent, the set of
    what running requests hold, the limit, and what this request reserves."""

    spent_key: str
    held_key: str
    limit: int
    amount: int


@dataclass(frozen=True)
class QuotaState:
    """One quota as a reservation found it: spent so far, and held by running requests."""

    spent: int
    held: int


@dataclass(frozen=True)
class Reserved:
    """The outcome of a reservation: ``refused`` is the index of the quota that said no (None:
    every quota reserved), ``states`` what each quota looked like before it."""

    refused: int | None
    states: tuple[QuotaState, ...]


@dataclass(frozen=True)
class Held:
    """One reservation a request holds: the set it is in and its member there."""

    held_key: str
    member: str

    @property
    def amount(self) -> int:
        """The reserved amount (the member ends with it)."""
        return int(self.member.rpartition(":")[2])


@dataclass(frozen=True)
class Add:
    """An amount to add to a counter; a new counter expires ``ttl_secs`` later."""

    key: str
    amount: int
    ttl_secs: float


def quota_refuses(state: QuotaState, limit: int, amount: int) -> bool:
    """The reservation rule: no once the limit is spent; otherwise yes when ``amount`` fits
    next to what is spent and held, and yes for a lone request (nothing held), whose run may
    overshoot by its own cost as before."""
    if state.spent >= limit:
        return True
    return state.held > 0 and state.spent + state.held + amount > limit


def held_for(quotas: Sequence[Quota], token: str) -> tuple[Held, ...]:
    """The reservations ``token`` holds after reserving ``quotas``."""
    return tuple(Held(q.held_key, f"{token}:{q.amount}") for q in quotas)


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

    async def values(self, keys: Sequence[str]) -> list[int]:
        """Several counters at once; 0 for each absent or expired one."""

    async def reserve(self, quotas: Sequence[Quota], token: str, ttl_secs: float) -> Reserved:
        """Test every quota (``quota_refuses``) and, when none refuses, reserve each one's
        amount under ``token`` for at most ``ttl_secs``; all in one atomic step."""

    async def settle(self, held: Sequence[Held], adds: Sequence[Add]) -> None:
        """Drop reservations and add real spend, in one atomic step."""

    async def aclose(self) -> None:
        """Drop connections."""


class MemoryCounters:
    """Counters of this process only; running-request slots die with it, so need no expiry."""

    def __init__(self) -> None:
        self._values: dict[str, int] = {}
        self._slots: dict[str, int] = {}
        self._held: dict[str, dict[str, int]] = {}
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
        return self._live(key, timestamp())

    async def add(self, key: str, amount: int, ttl_secs: float) -> int:
        """Add ``amount``; a new counter expires ``ttl_secs`` later. Returns the new value."""
        return self._add_now(key, amount, ttl_secs)

    def _add_now(self, key: str, amount: int, ttl_secs: float) -> int:
        now = timestamp()
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

    async def values(self, keys: Sequence[str]) -> list[int]:
        """Several counters at once; 0 for each absent or expired one."""
        now = timestamp()
        return [self._live(key, now) for key in keys]

    async def reserve(self, quotas: Sequence[Quota], token: str, ttl_secs: float) -> Reserved:
        """Test every quota and reserve them all, or none; no await inside, so atomic."""
        now = timestamp()
        states = tuple(
            QuotaState(self._live(q.spent_key, now), sum(self._held.get(q.held_key, {}).values()))
            for q in quotas
        )
        for index, (quota, state) in enumerate(zip(quotas, states, strict=True)):
            if quota_refuses(state, quota.limit, quota.amount):
                return Reserved(index, states)
        for held in held_for(quotas, token):
            self._held.setdefault(held.held_key, {})[held.member] = held.amount
        return Reserved(None, states)

    async def settle(self, held: Sequence[Held], adds: Sequence[Add]) -> None:
        """Drop reservations and add real spend; no await inside, so atomic."""
        for item in held:
            members = self._held.get(item.held_key, {})
            members.pop(item.member, None)
            if not members:
                self._held.pop(item.held_key, None)
        for add in adds:
            self._add_now(add.key, add.amount, add.ttl_secs)

    async def aclose(self) -> None:
        """Nothing to close."""


class RedisCounters:
    """Counters in Redis, each change one atomic script; keys start with ``prefix:``."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._add: AsyncScript = client.register_script(_ADD)
        self._acquire: AsyncScript = client.register_script(_ACQUIRE)
        self._reserve: AsyncScript = client.register_script(_RESERVE)
        self._settle: AsyncScript = client.register_script(_SETTLE)

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
            args=[-1 if limit is None else limit, ttl_secs, timestamp(), token],
        )
        return token if int(taken) else None

    async def release(self, key: str, token: str) -> None:
        """Give back the slot taken with ``token``; nothing when it expired already."""
        await self.client.zrem(self._key(key), token)

    async def running(self, key: str) -> int:
        """How many slots are taken and not expired."""
        return int(await self.client.zcount(self._key(key), f"({timestamp()}", "+inf"))

    async def values(self, keys: Sequence[str]) -> list[int]:
        """Several counters in one round trip; 0 for each absent or expired one."""
        if not keys:
            return []
        found = await self.client.mget([self._key(key) for key in keys])
        return [int(value or 0) for value in found]

    async def reserve(self, quotas: Sequence[Quota], token: str, ttl_secs: float) -> Reserved:
        """Test every quota and reserve them all, or none, in one script.

        A reservation expires by itself ``ttl_secs`` later, in case its node dies holding it.
        """
        keys = [self._key(k) for q in quotas for k in (q.spent_key, q.held_key)]
        args: list[Any] = [timestamp(), ttl_secs, token]
        for quota in quotas:
            args += [quota.limit, quota.amount]
        answer = [int(v) for v in await self._reserve(keys=keys, args=args)]
        states = tuple(QuotaState(answer[1 + 2 * i], answer[2 + 2 * i]) for i in range(len(quotas)))
        return Reserved(answer[0] - 1 if answer[0] else None, states)

    async def settle(self, held: Sequence[Held], adds: Sequence[Add]) -> None:
        """Drop reservations and add real spend, in one script."""
        keys = [self._key(h.held_key) for h in held] + [self._key(a.key) for a in adds]
        args: list[Any] = [len(held), *(h.member for h in held)]
        for add in adds:
            args += [add.amount, _whole(add.ttl_secs)]
        await self._settle(keys=keys, args=args)

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
        raise RuntimeError(
            "CCGATE_REDIS_URL needs the [redis] extra: pip install 'ccgate[redis]'"
        ) from exc
    client: Redis = Redis.from_url(client_url)
    # limits types its options as scalars; a connection pool is what its redis-py bridge takes.
    shared: dict[str, Any] = {"connection_pool": client.connection_pool}
    storage = RedisStorage(
        storage_uri, implementation="redispy", key_prefix=f"{prefix}:win", **shared
    )
    return storage, RedisCounters(client, prefix)


async def close_storage(storage: Storage) -> None:
    """Stop the memory storage's expiry task (Redis connections close with the counters)."""
    timer = storage.timer if isinstance(storage, MemoryStorage) else None
    if timer is not None and not timer.done():
        timer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timer
