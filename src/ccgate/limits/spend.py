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


class _Calendar:
    """One key's counter names and renewals for one calendar day of ``now``'s time zone
    (UTC), worked out once a day rather than on every request: formatting dates costs."""

    __slots__ = ("budget", "day", "month_tokens", "next_day", "next_month", "runs", "tokens")

    def __init__(self, key_id: str, now: datetime) -> None:
        self.day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        self.next_day = next_day(now)
        self.next_month = next_month(now)
        self.tokens = f"tokens:{key_id}:{now:%Y-%m-%d}"
        month = f"{now:%Y-%m}"
        self.budget = f"budget:{key_id}:{month}"
        self.runs = f"runs:{key_id}:{month}"
        self.month_tokens = f"month-tokens:{key_id}:{month}"

    def holds(self, now: datetime) -> bool:
        """True when ``now`` falls on this calendar's day (same time zone)."""
        return now.tzinfo is self.day.tzinfo and self.day <= now < self.next_day


_calendars: dict[str, _Calendar] = {}
_CALENDARS_KEPT = 4096


def _calendar(key_id: str, now: datetime) -> _Calendar:
    calendar = _calendars.get(key_id)
    if calendar is None or not calendar.holds(now):
        if len(_calendars) >= _CALENDARS_KEPT:
            _calendars.clear()
        calendar = _calendars[key_id] = _Calendar(key_id, now)
    return calendar


def tokens_key(key_id: str, now: datetime) -> str:
    """The counter of the key's tokens today (UTC)."""
    return _calendar(key_id, now).tokens


def budget_key(key_id: str, now: datetime) -> str:
    """The counter of the key's micro-dollars this month (UTC)."""
    return _calendar(key_id, now).budget


def average_keys(key_id: str, now: datetime) -> list[str]:
    """Runs and tokens this month: with the month's spend, the key's average per run."""
    calendar = _calendar(key_id, now)
    return [calendar.runs, calendar.month_tokens]


def usage_adds(key_id: str, tokens: int, cost_usd: float | None, now: datetime) -> list[Add]:
    """The counters a finished run's real usage goes into (none when it used nothing)."""
    micros = round(cost_usd * MICRO_USD) if cost_usd and cost_usd > 0 else 0
    tokens = max(0, tokens)
    if not tokens and not micros:
        return []
    calendar = _calendar(key_id, now)
    month_ttl = (calendar.next_month - now).total_seconds() + _COUNTER_GRACE_SECS
    adds = [Add(calendar.runs, 1, month_ttl)]
    if tokens:
        day_ttl = (calendar.next_day - now).total_seconds() + _COUNTER_GRACE_SECS
        adds += [
            Add(calendar.tokens, tokens, day_ttl),
            Add(calendar.month_tokens, tokens, month_ttl),
        ]
    if micros:
        adds.append(Add(calendar.budget, micros, month_ttl))
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
