"""The circuit breaker on a fake clock: opening, failing fast, one probe, closing."""

from __future__ import annotations

from datetime import datetime

import pytest

from ccgate.circuit import CircuitBreaker, CircuitOpen, State


class FakeClock:
    """A monotonic clock that only moves when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _opened(failures: int = 3, cooldown: float = 30.0) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    breaker = CircuitBreaker(failures, cooldown, clock=clock)
    for _ in range(failures):
        breaker.before_call()
        breaker.record_failure()
    return breaker, clock


def _state(breaker: CircuitBreaker) -> State:
    """Read the state afresh: mypy keeps an earlier ``assert breaker.state == ...`` narrowing."""
    return breaker.state


def test_circuit_opens_at_the_threshold_and_fails_fast() -> None:
    """Calls pass until the Nth consecutive failure; then they fail with the cooldown left."""
    clock = FakeClock()
    breaker = CircuitBreaker(3, 30.0, clock=clock)
    for _ in range(2):
        breaker.before_call()
        breaker.record_failure()
    breaker.before_call()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert _state(breaker) == "open"
    clock.now += 10
    with pytest.raises(CircuitOpen) as refused:
        breaker.before_call()
    assert refused.value.retry_after == pytest.approx(20.0)


def test_circuit_success_zeroes_the_failure_count() -> None:
    """Failures must be consecutive: a success in between starts the count again."""
    breaker = CircuitBreaker(3, 30.0, clock=FakeClock())
    for outcome in ("fail", "fail", "ok", "fail", "fail"):
        breaker.before_call()
        if outcome == "ok":
            breaker.record_success()
        else:
            breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 2


def test_circuit_half_open_lets_exactly_one_probe_through() -> None:
    """After the cooldown one caller probes; the others fail fast until it succeeds."""
    breaker, clock = _opened()
    clock.now += 31
    assert breaker.state == "half_open"
    breaker.before_call()
    for _ in range(5):
        with pytest.raises(CircuitOpen) as refused:
            breaker.before_call()
        assert refused.value.retry_after > 0
    breaker.record_success()
    assert _state(breaker) == "closed"
    breaker.before_call()
    assert breaker.snapshot()["consecutive_failures"] == 0


def test_circuit_failed_probe_reopens_for_a_full_cooldown() -> None:
    """A probe that fails opens the breaker again at once, with a fresh cooldown."""
    breaker, clock = _opened()
    clock.now += 31
    breaker.before_call()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 29
    with pytest.raises(CircuitOpen) as refused:
        breaker.before_call()
    assert refused.value.retry_after == pytest.approx(1.0)


def test_circuit_release_frees_the_probe_slot() -> None:
    """A probe whose client went away gives its slot to the next caller."""
    breaker, clock = _opened()
    clock.now += 31
    breaker.before_call()
    breaker.release()
    breaker.before_call()
    with pytest.raises(CircuitOpen):
        breaker.before_call()
    assert breaker.state == "half_open"


def test_circuit_upstream_retry_after_extends_the_open_period() -> None:
    """An upstream Retry-After longer than the cooldown keeps the breaker open that long."""
    clock = FakeClock()
    breaker = CircuitBreaker(1, 30.0, clock=clock)
    breaker.before_call()
    breaker.record_failure(retry_after=120.0)
    clock.now += 60
    with pytest.raises(CircuitOpen) as refused:
        breaker.before_call()
    assert refused.value.retry_after == pytest.approx(60.0)
    clock.now += 61
    breaker.before_call()


def test_circuit_snapshot_and_reset() -> None:
    """The snapshot shows an open breaker's numbers; reset closes it and clears them."""
    breaker, clock = _opened(failures=2, cooldown=30.0)
    clock.now += 5
    snap = breaker.snapshot()
    assert snap["state"] == "open"
    assert snap["consecutive_failures"] == 2
    assert (snap["threshold"], snap["cooldown_secs"]) == (2, 30.0)
    assert snap["retry_after_secs"] == pytest.approx(25.0)
    assert datetime.fromisoformat(snap["opened_at"]).tzinfo is not None
    breaker.reset()
    assert breaker.snapshot() == {
        "state": "closed",
        "consecutive_failures": 0,
        "threshold": 2,
        "cooldown_secs": 30.0,
        "opened_at": None,
        "retry_after_secs": 0.0,
    }
    breaker.before_call()
