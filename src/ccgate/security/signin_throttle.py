"""Slows down guessing of the admin token: failed sign-ins are counted per client address.

The first ``free_failures`` failures from an address cost nothing; the next locks the address
out for 1 s, and each one after it for twice as long (2 s, 4 s, ... up to a ceiling). While
locked, every admin sign-in from that address is refused unread, so a right guess made during
a lock-out is never confirmed. A success clears the address's count. IPv6 clients count per
/64 (one host holds a whole /64), and the table keeps at most ``max_tracked`` addresses,
dropping the one quiet longest.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ccgate.security.netrules import IPAddress

FREE_FAILURES = 4
BASE_LOCK_SECS = 1.0
MAX_LOCK_SECS = 300.0
FORGET_AFTER_SECS = 3600.0
MAX_TRACKED = 10_000


@dataclass
class _Failures:
    count: int
    last_at: float
    locked_until: float


def _bucket(address: IPAddress | None) -> str:
    if address is None:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class SignInThrottle:
    """Failed sign-ins per client address, and how long each address must wait."""

    def __init__(
        self,
        *,
        free_failures: int = FREE_FAILURES,
        base_lock_secs: float = BASE_LOCK_SECS,
        max_lock_secs: float = MAX_LOCK_SECS,
        forget_after_secs: float = FORGET_AFTER_SECS,
        max_tracked: int = MAX_TRACKED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.base_lock_secs = base_lock_secs
        self.max_lock_secs = max_lock_secs
        self.forget_after_secs = forget_after_secs
        self.max_tracked = max_tracked
        self._clock = clock
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def __len__(self) -> int:
        """How many addresses are tracked now."""
        return len(self._failures)

    def retry_after(self, address: IPAddress | None) -> float | None:
        """Seconds ``address`` must still wait before its next sign-in; None: it may now."""
        entry = self._current(_bucket(address))
        if entry is None:
            return None
        wait = entry.locked_until - self._clock()
        return wait if wait > 0 else None

    def failed(self, address: IPAddress | None) -> None:
        """Count a failed sign-in from ``address``; past the free ones, lock it out."""
        bucket, now = _bucket(address), self._clock()
        entry = self._current(bucket) or _Failures(0, now, 0.0)
        entry.count += 1
        entry.last_at = now
        beyond = entry.count - self.free_failures - 1
        if beyond >= 0:
            doubled = self.base_lock_secs * 2.0 ** min(beyond, 40)  # capped: no float overflow
            entry.locked_until = now + min(self.max_lock_secs, doubled)
        self._failures[bucket] = entry
        self._failures.move_to_end(bucket)
        while len(self._failures) > self.max_tracked:
            self._failures.popitem(last=False)

    def succeeded(self, address: IPAddress | None) -> None:
        """A right sign-in: forget the address's failures."""
        self._failures.pop(_bucket(address), None)

    def _current(self, bucket: str) -> _Failures | None:
        entry = self._failures.get(bucket)
        if entry is not None and self._clock() - entry.last_at > self.forget_after_secs:
            del self._failures[bucket]
            return None
        return entry
