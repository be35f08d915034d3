"""The Limiter: tests every limit of a key, then spends one request and takes a slot.

Windows: rpm (and fetch rpm) is a moving window of ``rpm_window_secs``; rpd and the global rpd
are fixed windows of ``rpd_window_secs`` that start with the window's first request. Token and
budget quotas follow the UTC calendar (day, month). Test and spend are separate steps, so two
requests racing for the last unit may both pass; that tiny overshoot is accepted.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter
from limits.util import WindowStats

from ccgate.clock import utcnow
from ccgate.errors import ApiError
from ccgate.limits.headers import RateState, rate_headers
from ccgate.limits.storage import Counters, close_storage, open_storage
from ccgate.store.keys import KeyPolicy

if TYPE_CHECKING:
    from ccgate.config import Settings

log = structlog.get_logger("ccgate.limits")

MICRO_USD = 1_000_000
# A calendar counter outlives its day or month by this much, then Redis drops it.
_COUNTER_GRACE_SECS = 3600
# Nobody can know when a running request ends; clients are told to try again this soon.
_CONCURRENCY_RETRY_SECS = 1.0


class LimitExceeded(ApiError):
    """A 429: ``error_type`` names the limit, ``retry_after`` when it frees (at least 1 s).

    ``state`` is the door-neutral rate state; ``headers`` start in the native/OpenAI style and
    ``use_door("anthropic")`` switches them to the Anthropic names.
    """

    def __init__(self, error_type: str, message: str, *, retry_after: float,
                 state: RateState) -> None:
        super().__init__(error_type, message, retry_after=max(1.0, retry_after),
                         headers=rate_headers("native", state))
        self.state = state

    def use_door(self, door: str) -> LimitExceeded:
        """Render the rate headers in ``door``'s style; returns self, for ``raise``."""
        self.headers = rate_headers(door, self.state)
        return self


class Admission:
    """An admitted request: its rate state for the response headers, and its running slot."""

    def __init__(self, state: RateState, counters: Counters, slot_key: str, token: str) -> None:
        self.state = state
        self._counters = counters
        self._slot_key = slot_key
        self._token = token
        self._released = False

    @property
    def released(self) -> bool:
        """True once the slot was given back."""
        return self._released

    async def release(self) -> None:
        """Free the concurrency slot; later calls do nothing."""
        if self._released:
            return
        self._released = True
        try:
            await self._counters.release(self._slot_key, self._token)
        except Exception as exc:  # Redis gone: the slot's safety expiry frees it later
            log.warning("limits_release_failed", error=type(exc).__name__)


@dataclass(frozen=True)
class _Window:
    error_type: str
    strategy: RateLimiter
    item: RateLimitItem
    identifier: str
    what: str


@dataclass(frozen=True)
class _Block:
    error_type: str
    retry_after: float
    message: str


def _seconds(secs: float) -> int:
    return max(1, math.ceil(secs))


def _next_day(now: datetime) -> datetime:
    return (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


def _next_month(now: datetime) -> datetime:
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def _per(secs: int) -> str:
    return "day" if secs == 86400 else "minute" if secs == 60 else f"{secs} s"


class Limiter:
    """Every per-key limit and the global rpd, in memory (per process) or Redis (shared).

    Windows are whole seconds (rounded up). ``concurrency_ttl_secs`` bounds how long a slot a
    dead node took keeps counting (Redis only); ``key_prefix`` starts every Redis key.
    """

    def __init__(self, *, redis_url: str | None, global_rpd: int = 0,
                 rpm_window_secs: float = 60, rpd_window_secs: float = 86400,
                 fetch_rpm: int = 30, concurrency_ttl_secs: float = 3600,
                 key_prefix: str = "ccgate") -> None:
        self.global_rpd = global_rpd
        self.rpm_window_secs = _seconds(rpm_window_secs)
        self.rpd_window_secs = _seconds(rpd_window_secs)
        self.fetch_rpm = fetch_rpm
        self.concurrency_ttl_secs = concurrency_ttl_secs
        self.shared = bool(redis_url)
        self._storage, self._counters = open_storage(redis_url, key_prefix)
        self._moving = MovingWindowRateLimiter(self._storage)
        self._fixed = FixedWindowRateLimiter(self._storage)

    @classmethod
    def from_settings(cls, settings: Settings) -> Limiter:
        """A limiter configured by CCGATE_REDIS_URL, CCGATE_GLOBAL_RPD and friends."""
        return cls(redis_url=settings.redis_url, global_rpd=settings.global_rpd,
                   rpm_window_secs=settings.rpm_window_secs,
                   rpd_window_secs=settings.rpd_window_secs, fetch_rpm=settings.fetch_rpm,
                   concurrency_ttl_secs=max(3600.0, 2 * settings.job_timeout_secs))

    def _windows(self, key_id: str, policy: KeyPolicy) -> list[_Window]:
        windows = []
        if policy.rpm is not None:
            windows.append(_Window(
                "rpm_exceeded", self._moving,
                RateLimitItemPerSecond(policy.rpm, self.rpm_window_secs, namespace="rpm"),
                key_id, f"this key's limit of {policy.rpm} requests per "
                        f"{_per(self.rpm_window_secs)}"))
        if policy.rpd is not None:
            windows.append(_Window(
                "rpd_exceeded", self._fixed,
                RateLimitItemPerSecond(policy.rpd, self.rpd_window_secs, namespace="rpd"),
                key_id, f"this key's limit of {policy.rpd} requests per "
                        f"{_per(self.rpd_window_secs)}"))
        if self.global_rpd > 0:
            windows.append(_Window(
                "global_rpd_exceeded", self._fixed,
                RateLimitItemPerSecond(self.global_rpd, self.rpd_window_secs,
                                       namespace="global-rpd"),
                "all", f"the server's limit of {self.global_rpd} requests per "
                       f"{_per(self.rpd_window_secs)} (CCGATE_GLOBAL_RPD)"))
        return windows

    @staticmethod
    def _state(policy: KeyPolicy, requests: WindowStats | None, tokens_used: int,
               now: datetime) -> RateState:
        """The headers' view: the rpm window when the key has one, else rpd; tokens today."""
        limit = policy.rpm if policy.rpm is not None else policy.rpd
        state = RateState()
        if limit is not None and requests is not None:
            state = replace(state, requests_limit=limit,
                            requests_remaining=max(0, requests.remaining),
                            requests_reset_secs=max(0.0, requests.reset_time - time.time()))
        if policy.tokens_per_day is not None:
            state = replace(state, tokens_limit=policy.tokens_per_day,
                            tokens_remaining=max(0, policy.tokens_per_day - tokens_used),
                            tokens_reset_secs=(_next_day(now) - now).total_seconds())
        return state

    async def admit(self, key_id: str, policy: KeyPolicy) -> Admission:
        """Let one request of ``key_id`` in, or raise LimitExceeded without spending anything.

        Every limit is tested first; only when all pass is one request spent in each window
        and a running slot taken. Call ``release()`` on the result when the request ends.
        """
        now = utcnow()
        slot_key = f"running:{key_id}"
        windows = self._windows(key_id, policy)
        (tokens_used, micros_spent, running), stats = await asyncio.gather(
            asyncio.gather(self._counters.get(f"tokens:{key_id}:{now:%Y-%m-%d}"),
                           self._counters.get(f"budget:{key_id}:{now:%Y-%m}"),
                           self._counters.running(slot_key)),
            asyncio.gather(*(w.strategy.get_window_stats(w.item, w.identifier)
                             for w in windows)))
        blocks = [_Block(w.error_type, s.reset_time - time.time(),
                         f"{w.what} is reached") for w, s in zip(windows, stats, strict=True)
                  if s.remaining < 1]
        blocks += self._quota_blocks(policy, tokens_used, micros_spent, running, now)
        # _windows puts rpm, else rpd, first: the window the headers report.
        has_requests = policy.rpm is not None or policy.rpd is not None
        requests_stats = stats[0] if has_requests else None
        if blocks:
            block = max(blocks, key=lambda b: b.retry_after)
            state = self._state(policy, requests_stats, tokens_used, now)
            raise LimitExceeded(block.error_type, block.message, retry_after=block.retry_after,
                                state=state)
        token = await self._counters.acquire(slot_key, policy.concurrency,
                                             self.concurrency_ttl_secs)
        if token is None:
            raise LimitExceeded("concurrency_exceeded", self._busy(policy),
                                retry_after=_CONCURRENCY_RETRY_SECS,
                                state=self._state(policy, requests_stats, tokens_used, now))
        admission = Admission(RateState(), self._counters, slot_key, token)
        try:
            await self._spend(windows)
            if has_requests:
                requests_stats = await windows[0].strategy.get_window_stats(
                    windows[0].item, windows[0].identifier)
        except BaseException:
            await admission.release()
            raise
        admission.state = self._state(policy, requests_stats, tokens_used, now)
        return admission

    def _quota_blocks(self, policy: KeyPolicy, tokens_used: int, micros_spent: int,
                      running: int, now: datetime) -> list[_Block]:
        blocks = []
        if policy.tokens_per_day is not None and tokens_used >= policy.tokens_per_day:
            blocks.append(_Block(
                "tokens_per_day_exceeded", (_next_day(now) - now).total_seconds(),
                f"this key's quota of {policy.tokens_per_day} tokens per day is used up "
                f"({tokens_used} used); it renews at 00:00 UTC"))
        budget = policy.budget_usd_per_month
        if budget is not None and micros_spent >= round(budget * MICRO_USD):
            blocks.append(_Block(
                "budget_exceeded", (_next_month(now) - now).total_seconds(),
                f"this key's budget of ${budget:.2f} per month is spent "
                f"(${micros_spent / MICRO_USD:.2f}); it renews on the 1st, 00:00 UTC"))
        if policy.concurrency is not None and running >= policy.concurrency:
            blocks.append(_Block("concurrency_exceeded", _CONCURRENCY_RETRY_SECS,
                                 self._busy(policy)))
        return blocks

    @staticmethod
    def _busy(policy: KeyPolicy) -> str:
        return (f"this key already runs {policy.concurrency} requests at once, as many as its "
                f"concurrency limit allows; retry when one finishes")

    async def _spend(self, windows: list[_Window]) -> None:
        """Hit every window; a window lost to a racing request raises its 429."""
        taken = await asyncio.gather(*(w.strategy.hit(w.item, w.identifier) for w in windows))
        for window, ok in zip(windows, taken, strict=True):
            if not ok:
                stats = await window.strategy.get_window_stats(window.item, window.identifier)
                raise LimitExceeded(window.error_type, f"{window.what} is reached",
                                    retry_after=stats.reset_time - time.time(), state=RateState())

    async def record_usage(self, key_id: str, policy: KeyPolicy, *, tokens: int,
                           cost_usd: float | None) -> None:
        """Add a finished run's tokens (input + output) and cost to today's and this month's
        totals. Counted for every key, limited or not, so ``usage`` can report it; a run may
        overshoot a quota by its own usage, and the next ``admit`` is refused."""
        del policy  # the totals do not depend on the limits; kept for the callers' symmetry
        now = utcnow()
        if tokens > 0:
            await self._counters.add(f"tokens:{key_id}:{now:%Y-%m-%d}", tokens,
                                     (_next_day(now) - now).total_seconds() + _COUNTER_GRACE_SECS)
        micros = round(cost_usd * MICRO_USD) if cost_usd else 0
        if micros > 0:
            await self._counters.add(f"budget:{key_id}:{now:%Y-%m}", micros,
                                     (_next_month(now) - now).total_seconds()
                                     + _COUNTER_GRACE_SECS)

    async def check_fetch(self, key_id: str) -> None:
        """Spend one page fetch of ``key_id`` (CCGATE_FETCH_RPM per minute window), or raise
        LimitExceeded("fetch_rpm_exceeded")."""
        item = RateLimitItemPerSecond(self.fetch_rpm, self.rpm_window_secs, namespace="fetch")
        if await self._moving.hit(item, key_id):
            return
        stats = await self._moving.get_window_stats(item, key_id)
        reset = max(0.0, stats.reset_time - time.time())
        raise LimitExceeded(
            "fetch_rpm_exceeded", f"this key's limit of {self.fetch_rpm} page fetches per "
            f"{_per(self.rpm_window_secs)} (CCGATE_FETCH_RPM) is reached", retry_after=reset,
            state=RateState(requests_limit=self.fetch_rpm, requests_remaining=0,
                            requests_reset_secs=reset))

    async def usage(self, key_id: str) -> dict[str, int | float]:
        """What ``key_id`` used: tokens today, USD this month (UTC calendar), requests running."""
        now = utcnow()
        tokens, micros, running = await asyncio.gather(
            self._counters.get(f"tokens:{key_id}:{now:%Y-%m-%d}"),
            self._counters.get(f"budget:{key_id}:{now:%Y-%m}"),
            self._counters.running(f"running:{key_id}"))
        return {"tokens_today": tokens, "cost_usd_this_month": micros / MICRO_USD,
                "running": running}

    async def aclose(self) -> None:
        """Close the Redis connections or stop the memory storage's sweeper."""
        await close_storage(self._storage)
        await self._counters.aclose()
