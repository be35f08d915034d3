"""A hand-moved clock for limit tests: ccgate's clock and the ``limits`` library's own reads of
``time.time()`` (its memory storage, its Redis moving window) both follow it."""

from __future__ import annotations

from types import SimpleNamespace

import limits.aio.storage.memory
import limits.aio.storage.redis.redispy
import limits.aio.strategies
import pytest

from ccgate import clock as ccgate_clock
from ccgate.clock import ManualClock

# The library modules that read wall-clock time through their module-level ``time``.
_LIBRARY_MODULES = (
    limits.aio.storage.memory,
    limits.aio.storage.redis.redispy,
    limits.aio.strategies,
)


def install_manual_clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """Make a ManualClock (starting now) ccgate's clock and the limits library's, until the
    test ends."""
    clock = ManualClock()
    monkeypatch.setattr(ccgate_clock, "_current", clock)
    for module in _LIBRARY_MODULES:
        monkeypatch.setattr(module, "time", SimpleNamespace(time=clock.time))
    return clock
