"""The Limiter: tests every limit of a key, then spends one request, takes a slot and
reserves what the request may spend.

Windows: rpm (and fetch rpm) is a moving window of ``rpm_window_secs``; rpd and the global rpd
are fixed windows of ``rpd_window_secs`` that start with the window's first request. Token and
budget quotas follow the UTC calendar (day, month). A request that may spend tokens or money
reserves its estimate (``limits/estimate.py``, or the key's average per run when that is more)
in one atomic step that refuses when spent + held + estimate would pass the quota; when the
request ends its reservation is dropped and its real spend counted, again in one step.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter
from limits.util import WindowStats

from ccgate.clock import timestamp, utcnow
from ccgate.errors import ApiError, error_type_of
from ccgate.limits.estimate import RunEstimate
from ccgate.limits.headers import RateState, rate_headers
from ccgate.limits.rules import QUOTA_RULES, WINDOW_RULES, QuotaRule, per
from ccgate.limits.spend import (
    MICRO_USD,
    Admission,
    average_keys,
    budget_key,
    next_day,
    tokens_key,
    usage_adds,
)
from ccgate.limits.storage import Held, Quota, QuotaState, close_storage, held_for, open_storage
from ccgate.policy import KeyPolicy

if TYPE_CHECKING:
    from ccgate.config import Settings

# Nobody can know when a running request ends; clients are told to try again this soon.
_CONCURRENCY_RETRY_SECS = 1.0


class LimitExceeded(ApiError):
    """A 429: ``error_type`` names the limit, ``retry_after`` when it frees (at least 1 s).

    ``state`` is the door-neutral rate state; ``headers`` start in the native/OpenAI style and
    ``use_door("anthropic")`` switches them to the Anthropic names.
    """

    def __init__(
        self, error_type: str, message: str, *, retry_after: float, state: RateState
    ) -> None:
        super().__init__(
            error_type_of(error_type, "rpm_exceeded"),  # every limit's type is in the catalogue
            message,
            retry_after=max(1.0, retry_after),
            headers=rate_headers("native", state),
        )
        self.state = state

    def use_door(self, door: str) -> LimitExceeded:
        """Render the rate headers in ``door``'s style; returns self, for ``raise``."""
        self.headers = rate_headers(door, self.state)
        return self


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


def _spent_block(rule: QuotaRule, policy: KeyPolicy, spent: int, now: datetime) -> _Block:
    """The 429 of a quota used up: it frees when its day or month renews."""
    return _Block(
        rule.error_type,
        (rule.renews(now) - now).total_seconds(),
        rule.spent_text(getattr(policy, rule.field), spent),
    )


@dataclass(frozen=True)
class _Usage:
    """What the key used so far, as admit reads it."""

    tokens_today: int
    micros_this_month: int
    runs_this_month: int
    tokens_this_month: int


class Limiter:
    """Every per-key limit and the global rpd, in memory (per process) or Redis (shared).

    Windows are whole seconds (rounded up). ``concurrency_ttl_secs`` bounds how long a slot a
    dead node took keeps counting (Redis only); ``key_prefix`` starts every Redis key.
    """

    def __init__(
        self,
        *,
        redis_url: str | None,
        global_rpd: int = 0,
        rpm_window_secs: float = 60,
        rpd_window_secs: float = 86400,
        fetch_rpm: int = 30,
        concurrency_ttl_secs: float = 3600,
        key_prefix: str = "ccgate",
    ) -> None:
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
        return cls(
            redis_url=settings.redis_url,
            global_rpd=settings.global_rpd,
            rpm_window_secs=settings.rpm_window_secs,
            rpd_window_secs=settings.rpd_window_secs,
            fetch_rpm=settings.fetch_rpm,
            concurrency_ttl_secs=max(3600.0, 2 * settings.job_timeout_secs),
        )

    def _windows(self, key_id: str, policy: KeyPolicy) -> list[_Window]:
        windows = []
        for rule in WINDOW_RULES:
            limit = rule.limit(policy)
            if limit is None:
                continue
            secs = self.rpm_window_secs if rule.moving else self.rpd_window_secs
            windows.append(
                _Window(
                    rule.error_type,
                    self._moving if rule.moving else self._fixed,
                    RateLimitItemPerSecond(limit, secs, namespace=rule.namespace),
                    key_id,
                    rule.what(limit, secs),
                )
            )
        if self.global_rpd > 0:
            windows.append(
                _Window(
                    "global_rpd_exceeded",
                    self._fixed,
                    RateLimitItemPerSecond(
                        self.global_rpd, self.rpd_window_secs, namespace="global-rpd"
                    ),
                    "all",
                    f"the server's limit of {self.global_rpd} requests per "
                    f"{per(self.rpd_window_secs)} (CCGATE_GLOBAL_RPD)",
                )
            )
        return windows

    @staticmethod
    def _state(
        policy: KeyPolicy, requests: WindowStats | None, tokens_used: int, now: datetime
    ) -> RateState:
        """The headers' view: the rpm window when the key has one, else rpd; tokens today."""
        limit = policy.rpm if policy.rpm is not None else policy.rpd
        state = RateState()
        if limit is not None and requests is not None:
            state = replace(
                state,
                requests_limit=limit,
                requests_remaining=max(0, requests.remaining),
                requests_reset_secs=max(0.0, requests.reset_time - timestamp()),
            )
        if policy.tokens_per_day is not None:
            state = replace(
                state,
                tokens_limit=policy.tokens_per_day,
                tokens_remaining=max(0, policy.tokens_per_day - tokens_used),
                tokens_reset_secs=(next_day(now) - now).total_seconds(),
            )
        return state

    async def admit(
        self,
        key_id: str,
        policy: KeyPolicy,
        estimate: RunEstimate | None = None,
        *,
        spends: bool = True,
    ) -> Admission:
        """Let one request of ``key_id`` in, or raise LimitExceeded without spending anything.

        Every limit is tested first; only when all pass is one request spent in each window,
        a running slot taken and, for a key with a token or budget quota, the request's
        ``estimate`` reserved (at least the key's average per run; with no estimate, a
        request of the default output size on the dearest model). ``spends=False`` marks a
        request that costs no tokens or money (count_tokens): quotas neither refuse nor
        reserve it. Call ``settle()`` or ``release()`` on the result when the request ends.
        """
        slot_key = f"running:{key_id}"
        windows = self._windows(key_id, policy)
        quotas_apply = spends and any(r.limit(policy) is not None for r in QUOTA_RULES)
        if not windows and not quotas_apply and policy.concurrency is None:
            # Nothing to test (no window, quota, concurrency limit or global rpd): the reads
            # below could refuse nothing, so only the running slot is taken (usage counts it).
            return await self._admit_unlimited(key_id, slot_key)
        now = utcnow()
        counter_keys = [tokens_key(key_id, now), budget_key(key_id, now)]
        if quotas_apply:
            counter_keys += average_keys(key_id, now)
        (values, running), stats = await asyncio.gather(
            asyncio.gather(self._counters.values(counter_keys), self._counters.running(slot_key)),
            asyncio.gather(*(w.strategy.get_window_stats(w.item, w.identifier) for w in windows)),
        )
        used = _Usage(*values, *([0, 0] if not quotas_apply else []))
        blocks = [
            _Block(w.error_type, s.reset_time - timestamp(), f"{w.what} is reached")
            for w, s in zip(windows, stats, strict=True)
            if s.remaining < 1
        ]
        blocks += self._quota_blocks(policy, used, running, now, spends=spends)
        # _windows puts rpm, else rpd, first: the window the headers report.
        has_requests = policy.rpm is not None or policy.rpd is not None
        requests_stats = stats[0] if has_requests else None
        state = self._state(policy, requests_stats, used.tokens_today, now)
        if blocks:
            block = max(blocks, key=lambda b: b.retry_after)
            raise LimitExceeded(
                block.error_type, block.message, retry_after=block.retry_after, state=state
            )
        token = await self._counters.acquire(
            slot_key, policy.concurrency, self.concurrency_ttl_secs
        )
        if token is None:
            raise LimitExceeded(
                "concurrency_exceeded",
                self._busy(policy),
                retry_after=_CONCURRENCY_RETRY_SECS,
                state=state,
            )
        admission = Admission(RateState(), self._counters, slot_key, token, key_id=key_id)
        try:
            if quotas_apply:
                admission.held = await self._reserve(key_id, policy, estimate, used, now, state)
            await self._spend(windows)
            if has_requests:
                requests_stats = await windows[0].strategy.get_window_stats(
                    windows[0].item, windows[0].identifier
                )
        except BaseException:
            await admission.release()
            raise
        admission.state = self._state(policy, requests_stats, used.tokens_today, now)
        return admission

    async def _admit_unlimited(self, key_id: str, slot_key: str) -> Admission:
        token = await self._counters.acquire(slot_key, None, self.concurrency_ttl_secs)
        if token is None:  # pragma: no cover - a slot without a limit is never refused
            raise AssertionError("a running slot without a limit was refused")
        return Admission(RateState(), self._counters, slot_key, token, key_id=key_id)

    async def _reserve(
        self,
        key_id: str,
        policy: KeyPolicy,
        estimate: RunEstimate | None,
        used: _Usage,
        now: datetime,
        state: RateState,
    ) -> tuple[Held, ...]:
        """Hold the request's estimated tokens and cost, or raise the quota's 429."""
        estimate = estimate or RunEstimate("", 0)
        tokens, micros = estimate.tokens, estimate.micro_usd
        if used.runs_this_month > 0:  # the key's own average per run, when that is more
            tokens = max(tokens, math.ceil(used.tokens_this_month / used.runs_this_month))
            micros = max(micros, math.ceil(used.micros_this_month / used.runs_this_month))
        quotas = [
            (rule, Quota(rule.spent_key(key_id, now), f"held-{rule.kind}:{key_id}", limit, amount))
            for rule in QUOTA_RULES
            if (limit := rule.limit(policy)) is not None
            for amount in [rule.amount(tokens, micros)]
        ]
        token = secrets.token_hex(8)
        reserved = await self._counters.reserve(
            [q for _, q in quotas], token, self.concurrency_ttl_secs
        )
        if reserved.refused is not None:
            rule, quota = quotas[reserved.refused]
            block = self._reservation_block(
                rule, quota, reserved.states[reserved.refused], policy, now
            )
            raise LimitExceeded(
                block.error_type, block.message, retry_after=block.retry_after, state=state
            )
        return held_for([q for _, q in quotas], token)

    def _reservation_block(
        self, rule: QuotaRule, quota: Quota, found: QuotaState, policy: KeyPolicy, now: datetime
    ) -> _Block:
        """The 429 of a quota that refused a reservation: spent (it renews with the day or
        month), or held by running requests (retry when one of them ends)."""
        if found.spent >= quota.limit:
            return _spent_block(rule, policy, found.spent, now)
        return _Block(
            rule.error_type,
            _CONCURRENCY_RETRY_SECS,
            rule.held_text(quota.limit, found, quota.amount),
        )

    def _quota_blocks(
        self, policy: KeyPolicy, used: _Usage, running: int, now: datetime, *, spends: bool = True
    ) -> list[_Block]:
        blocks = []
        spent = {"tokens": used.tokens_today, "budget": used.micros_this_month}
        for rule in QUOTA_RULES if spends else ():
            limit = rule.limit(policy)
            if limit is not None and spent[rule.kind] >= limit:
                blocks.append(_spent_block(rule, policy, spent[rule.kind], now))
        if policy.concurrency is not None and running >= policy.concurrency:
            blocks.append(
                _Block("concurrency_exceeded", _CONCURRENCY_RETRY_SECS, self._busy(policy))
            )
        return blocks

    @staticmethod
    def _busy(policy: KeyPolicy) -> str:
        return (
            f"this key already runs {policy.concurrency} requests at once, as many as its "
            f"concurrency limit allows; retry when one finishes"
        )

    async def _spend(self, windows: list[_Window]) -> None:
        """Hit every window; a window lost to a racing request raises its 429."""
        taken = await asyncio.gather(*(w.strategy.hit(w.item, w.identifier) for w in windows))
        for window, ok in zip(windows, taken, strict=True):
            if not ok:
                stats = await window.strategy.get_window_stats(window.item, window.identifier)
                raise LimitExceeded(
                    window.error_type,
                    f"{window.what} is reached",
                    retry_after=stats.reset_time - timestamp(),
                    state=RateState(),
                )

    async def record_usage(
        self, key_id: str, policy: KeyPolicy, *, tokens: int, cost_usd: float | None
    ) -> None:
        """Add a finished run's tokens (input + output) and cost to today's and this month's
        totals, outside any admission (``Admission.settle`` does this for admitted runs).
        Counted for every key, limited or not, so ``usage`` can report it."""
        del policy  # the totals do not depend on the limits; kept for the callers' symmetry
        adds = usage_adds(key_id, tokens, cost_usd, utcnow())
        if adds:
            await self._counters.settle((), adds)

    async def check_fetch(self, key_id: str) -> None:
        """Spend one page fetch of ``key_id`` (CCGATE_FETCH_RPM per minute window), or raise
        LimitExceeded("fetch_rpm_exceeded")."""
        item = RateLimitItemPerSecond(self.fetch_rpm, self.rpm_window_secs, namespace="fetch")
        if await self._moving.hit(item, key_id):
            return
        stats = await self._moving.get_window_stats(item, key_id)
        reset = max(0.0, stats.reset_time - timestamp())
        raise LimitExceeded(
            "fetch_rpm_exceeded",
            f"this key's limit of {self.fetch_rpm} page fetches per "
            f"{per(self.rpm_window_secs)} (CCGATE_FETCH_RPM) is reached",
            retry_after=reset,
            state=RateState(
                requests_limit=self.fetch_rpm, requests_remaining=0, requests_reset_secs=reset
            ),
        )

    async def usage(self, key_id: str) -> dict[str, int | float]:
        """What ``key_id`` used: tokens today, USD this month (UTC calendar), requests running."""
        now = utcnow()
        tokens, micros, running = await asyncio.gather(
            self._counters.get(tokens_key(key_id, now)),
            self._counters.get(budget_key(key_id, now)),
            self._counters.running(f"running:{key_id}"),
        )
        return {
            "tokens_today": tokens,
            "cost_usd_this_month": micros / MICRO_USD,
            "running": running,
        }

    async def aclose(self) -> None:
        """Close the Redis connections or stop the memory storage's sweeper."""
        await close_storage(self._storage)
        await self._counters.aclose()
