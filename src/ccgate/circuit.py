"""A circuit breaker for the API backend: stop calling an upstream that keeps failing.

Closed, calls pass and consecutive failures are counted. At the threshold it opens: every call
fails fast with CircuitOpen until the cooldown (or a longer upstream Retry-After) has passed.
Then it is half-open: exactly one caller goes through as the probe while the others still fail
fast; the probe's success closes the breaker, its failure re-opens it at once.

Pure and synchronous: no I/O, no locks. Under asyncio every method runs without yielding, so
concurrent tasks on one loop cannot interleave inside it. ``SharedCircuit`` (circuit_shared.py)
shares its openings and its probe between nodes through Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

from ccgate.clock import utcnow

State = Literal["closed", "open", "half_open"]

# What a caller turned away during a probe is told to wait: the probe settles things soon.
_PROBE_WAIT_SECS = 1.0


class CircuitOpen(Exception):
    """The breaker refuses calls for now; ``retry_after`` is how long until it may not."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"circuit open, retry after {retry_after:.1f} s")
        self.retry_after = retry_after


class CircuitBreaker:
    """Counts consecutive upstream failures and fails fast while the upstream looks down."""

    def __init__(
        self,
        failures: int,
        cooldown_secs: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        if cooldown_secs <= 0:
            raise ValueError("cooldown_secs must be positive")
        self.threshold = failures
        self.cooldown_secs = cooldown_secs
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._open_until = 0.0
        self._probing = False

    @property
    def state(self) -> State:
        """``closed``, ``open`` (failing fast) or ``half_open`` (cooldown over, probing)."""
        if self._opened_at is None:
            return "closed"
        return "open" if self._clock() < self._open_until else "half_open"

    @property
    def consecutive_failures(self) -> int:
        """Failures counted since the last success or reset."""
        return self._failures

    def before_call(self) -> None:
        """Let a call through, or raise CircuitOpen; in half-open only one probe at a time.

        A caller let through must end with exactly one of record_success, record_failure or
        release.
        """
        if self._opened_at is None:
            return
        now = self._clock()
        if now < self._open_until:
            raise CircuitOpen(self._open_until - now)
        if self._probing:
            raise CircuitOpen(_PROBE_WAIT_SECS)
        self._probing = True

    async def admit(self) -> None:
        """``before_call`` for async callers; a breaker shared between nodes overrides it to
        take the single probe across every node."""
        self.before_call()

    def hold_open_until(self, until: float) -> None:
        """Open (or keep open) until ``until`` on this breaker's clock: another node opened."""
        if self._opened_at is None:
            self._opened_at = self._clock()
        self._open_until = max(self._open_until, until)
        self._failures = max(self._failures, self.threshold)

    def record_success(self) -> None:
        """The upstream answered well: close the breaker and forget past failures."""
        self._failures = 0
        self._opened_at = None
        self._open_until = 0.0
        self._probing = False

    def record_failure(self, retry_after: float | None = None) -> None:
        """Count one upstream failure; open at the threshold, re-open at once after a probe.

        ``retry_after`` (from the upstream) longer than the cooldown keeps it open longer.
        """
        now = self._clock()
        self._failures += 1
        hold = max(self.cooldown_secs, retry_after or 0.0)
        failed_probe = self._probing
        self._probing = False
        if self._opened_at is None:
            if self._failures >= self.threshold:
                self._opened_at = now
                self._open_until = now + hold
        elif failed_probe:
            self._opened_at = now
            self._open_until = now + hold
        else:
            # A call that started before the breaker opened failed late: keep the open period,
            # stretched only if upstream asked for longer.
            self._open_until = max(self._open_until, now + (retry_after or 0.0))

    def release(self) -> None:
        """The call ended with neither verdict (client gone, 4xx): free the probe slot."""
        self._probing = False

    def reset(self) -> None:
        """Close the breaker by hand (the admin's reset) and forget every failure."""
        self.record_success()

    def snapshot(self) -> dict[str, Any]:
        """The breaker's state for the admin API and health checks."""
        now = self._clock()
        opened_iso = None
        if self._opened_at is not None:
            opened = utcnow() - timedelta(seconds=now - self._opened_at)
            opened_iso = opened.isoformat()
        return {
            "state": self.state,
            "consecutive_failures": self._failures,
            "threshold": self.threshold,
            "cooldown_secs": self.cooldown_secs,
            "opened_at": opened_iso,
            "retry_after_secs": round(max(0.0, self._open_until - now), 3)
            if self._opened_at is not None
            else 0.0,
        }
