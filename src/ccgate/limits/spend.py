"""What a key spends: the counters its usage goes into, and an admitted request's running
slot and reservations, settled with its real usage when it ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog

from ccgate.clock import utcnow
from ccgate.limits.headers import RateState
from ccgate.limits.storage import Add, Counters, Held

log = structlog.get_logger("ccgate.limits")

MICRO_USD = 1_000_000
# A calendar counter outlives its day or month by this much, then Redis drops it.
_COUNTER_GRACE_SECS = 3600


def next_day(now: datetime) -> datetime:
    """Midnight UTC after ``now``."""
    return (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


def next_month(now: datetime) -> datetime:
    """The first of the month after ``now``, 00:00 UTC."""
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def tokens_key(key_id: str, now: datetime) -> str:
    """The counter of the key's tokens today (UTC)."""
    return f"tokens:{key_id}:{now:%Y-%m-%d}"


def budget_key(key_id: str, now: datetime) -> str:
    """The counter of the key's micro-dollars this month (UTC)."""
    return f"budget:{key_id}:{now:%Y-%m}"


def average_keys(key_id: str, now: datetime) -> list[str]:
    """Runs and tokens this month: with the month's spend, the key's average per run."""
    return [f"runs:{key_id}:{now:%Y-%m}", f"month-tokens:{key_id}:{now:%Y-%m}"]


def usage_adds(key_id: str, tokens: int, cost_usd: float | None, now: datetime) -> list[Add]:
    """The counters a finished run's real usage goes into (none when it used nothing)."""
    micros = round(cost_usd * MICRO_USD) if cost_usd and cost_usd > 0 else 0
    tokens = max(0, tokens)
    if not tokens and not micros:
        return []
    day_ttl = (next_day(now) - now).total_seconds() + _COUNTER_GRACE_SECS
    month_ttl = (next_month(now) - now).total_seconds() + _COUNTER_GRACE_SECS
    runs_key, month_tokens_key = average_keys(key_id, now)
    adds = [Add(runs_key, 1, month_ttl)]
    if tokens:
        adds += [
            Add(tokens_key(key_id, now), tokens, day_ttl),
            Add(month_tokens_key, tokens, month_ttl),
        ]
    if micros:
        adds.append(Add(budget_key(key_id, now), micros, month_ttl))
    return adds


class Admission:
    """An admitted request: its rate state for the response headers, its running slot and
    what it reserved of the key's quotas."""

    def __init__(
        self,
        state: RateState,
        counters: Counters,
        slot_key: str,
        token: str,
        *,
        key_id: str = "",
        held: tuple[Held, ...] = (),
    ) -> None:
        self.state = state
        self.held = held
        self._counters = counters
        self._slot_key = slot_key
        self._token = token
        self._key_id = key_id
        self._released = False

    @property
    def released(self) -> bool:
        """True once the slot was given back."""
        return self._released

    async def release(self) -> None:
        """Free the slot and drop the reservations, spending nothing; later calls do nothing."""
        await self.settle(tokens=0, cost_usd=None)

    async def settle(self, *, tokens: int, cost_usd: float | None) -> None:
        """Free the slot, drop the reservations and count what the run really spent (tokens
        in + out, USD), the last two in one atomic step; later calls do nothing."""
        if self._released:
            return
        self._released = True
        adds = usage_adds(self._key_id, tokens, cost_usd, utcnow())
        if self.held or adds:
            try:
                await self._counters.settle(self.held, adds)
            except Exception as exc:  # Redis gone: reservations expire with the slot's expiry
                log.warning("limits_settle_failed", error=type(exc).__name__)
        try:
            await self._counters.release(self._slot_key, self._token)
        except Exception as exc:  # Redis gone: the slot's safety expiry frees it later
            log.warning("limits_release_failed", error=type(exc).__name__)
