"""The one way ccgate reads wall-clock time, so tests can set it.

``utcnow()`` and ``timestamp()`` ask the current clock: the system's, or one a test installs
with ``set_clock`` (a ``ManualClock`` moves only when told) and removes with ``reset_clock``.
Durations measured with ``time.monotonic`` are not wall-clock reads and do not come here.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """A source of wall-clock time."""

    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...

    def time(self) -> float:
        """The current time in seconds since the epoch."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        return datetime.now(UTC)

    def time(self) -> float:
        """The current time in seconds since the epoch."""
        return time.time()


class ManualClock:
    """A clock that stands still until ``advance`` moves it (for tests)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)

    def now(self) -> datetime:
        """The clock's time, timezone-aware, in UTC."""
        return self._now

    def time(self) -> float:
        """The clock's time in seconds since the epoch."""
        return self._now.timestamp()

    def advance(self, secs: float) -> None:
        """Move the clock ``secs`` seconds forward."""
        self._now += timedelta(seconds=secs)


_SYSTEM = SystemClock()
_current: Clock = _SYSTEM


def set_clock(clock: Clock) -> None:
    """Make ``clock`` the one every wall-clock read of ccgate asks."""
    global _current
    _current = clock


def reset_clock() -> None:
    """Go back to the system clock."""
    set_clock(_SYSTEM)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return _current.now()


def timestamp() -> float:
    """The current time in seconds since the epoch (what ``time.time()`` gives)."""
    return _current.time()
