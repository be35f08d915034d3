"""What the queue knows of the subscription's plan windows: when they close, and how much of
them each key may still use."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from ccgate.policy import KeyPolicy
from ccgate.runners.plan_windows import PlanWindow
from ccgate.store import Store

# How long to hold work when a window closed without saying when it resets.
UNKNOWN_RESET = timedelta(minutes=5)


class WindowsClosed(Exception):
    """A plan window (or the key's share of one) is used up until ``until``."""

    def __init__(self, until: datetime, now: datetime, *, share: bool = False) -> None:
        what = "this key's share of the plan window" if share else "the plan's usage window"
        super().__init__(f"{what} is used up until {until.isoformat()}")
        self.until = until
        self.share = share
        self.retry_after = max(1.0, (until - now).total_seconds())


class PlanGate:
    """The last-seen plan windows (kept in the store so every node shares them)."""

    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock
        self.windows: dict[str, PlanWindow] = {}

    async def refresh(self) -> None:
        """Read the windows other nodes may have seen since."""
        self.windows = {w.name: w for w in await self.store.plan_windows.all()}

    async def observe(self, windows: Sequence[PlanWindow], key_id: str | None) -> None:
        """Store what a run of ``key_id`` saw; the newest report of each window wins."""
        if not windows:
            return
        await self.store.plan_windows.record(windows, key_id)
        for window in windows:
            known = self.windows.get(window.name)
            if known is None or known.seen_at <= window.seen_at:
                self.windows[window.name] = window

    def closed_until(self) -> datetime | None:
        """When every window that refuses requests now has reset; None while none does."""
        now = self.clock()
        resets = [
            w.resets_at or w.seen_at + UNKNOWN_RESET
            for w in self.windows.values()
            if w.closed_at(now)
        ]
        resets = [r for r in resets if r > now]
        return max(resets) if resets else None

    async def check(self, key_id: str | None, policy: KeyPolicy | None = None) -> None:
        """Raise WindowsClosed while the plan, or this key's share of it, is used up;
        ``policy`` is the key's as just admitted (None: read the key)."""
        now = self.clock()
        until = self.closed_until()
        if until is not None:
            raise WindowsClosed(until, now)
        if key_id is None:
            return
        if policy is None:
            key = await self.store.keys.by_id(key_id)
            policy = key.policy if key is not None else None
        share = policy.window_share if policy is not None else None
        if share is None:
            return
        spent = [
            u.resets_at
            for u in await self.store.plan_windows.usage_of(key_id)
            if u.used >= share and u.resets_at is not None and u.resets_at > now
        ]
        if spent:
            raise WindowsClosed(max(spent), now, share=True)
