"""Failed admin sign-ins per client address: free tries, doubling lock-outs, bounded memory."""

from __future__ import annotations

import ipaddress
from typing import Any

from ccgate.security.signin_throttle import SignInThrottle

ONE = ipaddress.ip_address("198.51.100.1")
TWO = ipaddress.ip_address("198.51.100.2")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _throttle(clock: Clock, **options: Any) -> SignInThrottle:
    return SignInThrottle(clock=clock, **options)


def test_signin_throttle_locks_out_after_the_free_failures_for_doubling_times() -> None:
    """Four failures cost nothing; the fifth locks the address out for 1 s, and each further
    one doubles the wait, up to the ceiling."""
    clock = Clock()
    throttle = _throttle(clock, max_lock_secs=6.0)
    for _ in range(4):
        throttle.failed(ONE)
    assert throttle.retry_after(ONE) is None
    waits = []
    for _ in range(5):
        throttle.failed(ONE)
        waits.append(throttle.retry_after(ONE))
    assert waits == [1.0, 2.0, 4.0, 6.0, 6.0]
    clock.now += 6.0
    assert throttle.retry_after(ONE) is None


def test_signin_throttle_counts_each_address_apart() -> None:
    """One address locked out leaves another untouched."""
    throttle = _throttle(Clock())
    for _ in range(8):
        throttle.failed(ONE)
    assert throttle.retry_after(ONE) is not None
    assert throttle.retry_after(TWO) is None


def test_signin_throttle_success_clears_the_count() -> None:
    """A right sign-in forgets the address's earlier failures."""
    throttle = _throttle(Clock())
    for _ in range(4):
        throttle.failed(ONE)
    throttle.succeeded(ONE)
    for _ in range(4):
        throttle.failed(ONE)
    assert throttle.retry_after(ONE) is None


def test_signin_throttle_counts_ipv6_per_64() -> None:
    """Addresses of one IPv6 /64 share a count, so hopping inside it gains nothing."""
    throttle = _throttle(Clock())
    for n in range(1, 6):
        throttle.failed(ipaddress.ip_address(f"2001:db8:1:2::{n:x}"))
    assert throttle.retry_after(ipaddress.ip_address("2001:db8:1:2::ffff")) is not None
    assert throttle.retry_after(ipaddress.ip_address("2001:db8:1:3::1")) is None


def test_signin_throttle_forgets_quiet_addresses_and_stays_bounded() -> None:
    """Failures older than the quiet period are forgotten, and the table never holds more
    than max_tracked addresses."""
    clock = Clock()
    throttle = _throttle(clock, forget_after_secs=60.0, max_tracked=100)
    for _ in range(5):
        throttle.failed(ONE)
    clock.now += 61.0
    throttle.failed(ONE)
    assert throttle.retry_after(ONE) is None
    for n in range(1000):
        throttle.failed(ipaddress.ip_address(f"10.0.{n // 256}.{n % 256}"))
    assert len(throttle) == 100
