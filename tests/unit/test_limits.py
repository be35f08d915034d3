"""The in-memory Limiter: each limit refuses at its count, frees on time, and spends nothing
when it refuses; the rate headers of each door."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ccgate.clock import ManualClock
from ccgate.config import Settings
from ccgate.limits import Admission, Limiter, LimitExceeded, RateState, RunEstimate, rate_headers
from ccgate.limits.headers import openai_duration
from ccgate.policy import KeyPolicy
from tests.support.clock import install_manual_clock

MakeLimiter = Callable[..., Limiter]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """A clock that moves only when the test says, so windows free without sleeping."""
    return install_manual_clock(monkeypatch)


@pytest.fixture
async def make_limiter() -> AsyncIterator[MakeLimiter]:
    """Build in-memory Limiters; every one is closed at the end of the test."""
    built: list[Limiter] = []

    def build(**options: Any) -> Limiter:
        limiter = Limiter(**{"redis_url": None, **options})
        built.append(limiter)
        return limiter

    yield build
    for limiter in built:
        await limiter.aclose()


async def _refused(limiter: Limiter, policy: KeyPolicy, key_id: str = "k1") -> LimitExceeded:
    with pytest.raises(LimitExceeded) as caught:
        await limiter.admit(key_id, policy)
    return caught.value


def _secs_to_midnight() -> float:
    now = datetime.now(UTC)
    return (
        (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0) - now
    ).total_seconds()


async def test_limiter_rpm_refuses_the_request_after_the_limit(make_limiter: MakeLimiter) -> None:
    """With rpm=3, three requests pass and the fourth is a 429 rpm_exceeded."""
    limiter = make_limiter()
    policy = KeyPolicy(rpm=3)
    remaining = [(await limiter.admit("k1", policy)).state.requests_remaining for _ in range(3)]
    error = await _refused(limiter, policy)
    assert remaining == [2, 1, 0]
    assert error.error_type == "rpm_exceeded" and error.status == 429
    assert (await limiter.admit("other-key", policy)).state.requests_remaining == 2


async def test_limiter_rpm_retry_after_is_what_is_left_of_the_window(
    make_limiter: MakeLimiter, clock: ManualClock
) -> None:
    """The rpm 429's Retry-After is the time until the oldest request leaves the window."""
    limiter = make_limiter(rpm_window_secs=60)
    await limiter.admit("k1", KeyPolicy(rpm=1))
    clock.advance(0.3)
    error = await _refused(limiter, KeyPolicy(rpm=1))
    assert error.retry_after is not None and 55 < error.retry_after <= 59.8
    assert error.headers["x-ratelimit-remaining-requests"] == "0"


async def test_limiter_rpm_window_frees_after_its_length(
    make_limiter: MakeLimiter, make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    """With CCGATE_RPM_WINDOW_SECS=1 a spent rpm lets requests in again a second later."""
    settings = make_settings(CCGATE_RPM_WINDOW_SECS=1)
    limiter = Limiter.from_settings(settings)
    try:
        await limiter.admit("k1", KeyPolicy(rpm=1))
        assert (await _refused(limiter, KeyPolicy(rpm=1))).retry_after == 1.0
        clock.advance(1.1)
        assert (await limiter.admit("k1", KeyPolicy(rpm=1))).state.requests_remaining == 0
    finally:
        await limiter.aclose()


async def test_limiter_rpd_refuses_after_the_limit_until_its_window_ends(
    make_limiter: MakeLimiter,
) -> None:
    """With rpd=2 the third request is rpd_exceeded, Retry-After the rest of the day window."""
    limiter = make_limiter(rpd_window_secs=120)
    policy = KeyPolicy(rpd=2)
    for _ in range(2):
        await limiter.admit("k1", policy)
    error = await _refused(limiter, policy)
    assert error.error_type == "rpd_exceeded"
    assert error.retry_after is not None and 118 <= error.retry_after <= 120
    assert error.headers["x-ratelimit-limit-requests"] == "2"


async def test_limiter_rpd_window_frees_after_its_length(
    make_limiter: MakeLimiter, clock: ManualClock
) -> None:
    """A spent rpd window with rpd_window_secs=1 lets requests in again after a second."""
    limiter = make_limiter(rpd_window_secs=1)
    await limiter.admit("k1", KeyPolicy(rpd=1))
    await _refused(limiter, KeyPolicy(rpd=1))
    clock.advance(1.1)
    await limiter.admit("k1", KeyPolicy(rpd=1))


async def test_limiter_global_rpd_counts_requests_of_every_key(make_limiter: MakeLimiter) -> None:
    """CCGATE_GLOBAL_RPD=2 admits two requests over all keys, then refuses any key."""
    limiter = make_limiter(global_rpd=2)
    await limiter.admit("a", KeyPolicy())
    await limiter.admit("b", KeyPolicy())
    error = await _refused(limiter, KeyPolicy(), key_id="c")
    assert error.error_type == "global_rpd_exceeded"
    assert "CCGATE_GLOBAL_RPD" in error.message


async def test_limiter_concurrency_refuses_while_every_slot_is_taken(
    make_limiter: MakeLimiter,
) -> None:
    """With concurrency=2 a third running request is refused until one is released."""
    limiter = make_limiter()
    policy = KeyPolicy(concurrency=2)
    first = await limiter.admit("k1", policy)
    await limiter.admit("k1", policy)
    error = await _refused(limiter, policy)
    assert error.error_type == "concurrency_exceeded" and error.retry_after == 1.0
    await first.release()
    await limiter.admit("k1", policy)
    assert (await limiter.usage("k1"))["running"] == 2


async def test_limiter_double_release_frees_only_one_slot(make_limiter: MakeLimiter) -> None:
    """Releasing the same admission twice gives back one slot, not two."""
    limiter = make_limiter()
    policy = KeyPolicy(concurrency=2)
    first = await limiter.admit("k1", policy)
    await limiter.admit("k1", policy)
    await first.release()
    await first.release()
    await limiter.admit("k1", policy)
    assert (await _refused(limiter, policy)).error_type == "concurrency_exceeded"
    assert first.released


async def test_limiter_refused_request_spends_nothing(make_limiter: MakeLimiter) -> None:
    """Requests refused for concurrency do not use up the key's rpm or the global rpd."""
    limiter = make_limiter(global_rpd=2)
    policy = KeyPolicy(rpm=2, concurrency=1)
    running = await limiter.admit("k1", policy)
    for _ in range(5):
        assert (await _refused(limiter, policy)).error_type == "concurrency_exceeded"
    await running.release()
    second = await limiter.admit("k1", policy)
    assert second.state.requests_remaining == 0


async def test_limiter_tokens_per_day_refuses_once_usage_reaches_the_quota(
    make_limiter: MakeLimiter,
) -> None:
    """After runs used 110 of 100 tokens the next request is refused until 00:00 UTC."""
    limiter = make_limiter()
    policy = KeyPolicy(tokens_per_day=100)
    await limiter.record_usage("k1", policy, tokens=60, cost_usd=None)
    assert (await limiter.admit("k1", policy)).state.tokens_remaining == 40
    await limiter.record_usage("k1", policy, tokens=50, cost_usd=None)
    error = await _refused(limiter, policy)
    assert error.error_type == "tokens_per_day_exceeded"
    assert error.retry_after is not None
    assert abs(error.retry_after - max(1.0, _secs_to_midnight())) < 5
    assert error.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_limiter_budget_refuses_once_the_month_is_spent(make_limiter: MakeLimiter) -> None:
    """A $1 monthly budget admits at $0.60 spent and refuses at $1.00 until the 1st (UTC)."""
    limiter = make_limiter()
    policy = KeyPolicy(budget_usd_per_month=1.0)
    await limiter.record_usage("k1", policy, tokens=10, cost_usd=0.6)
    await limiter.admit("k1", policy)
    await limiter.record_usage("k1", policy, tokens=10, cost_usd=0.4)
    error = await _refused(limiter, policy)
    now = datetime.now(UTC)
    first = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    assert error.error_type == "budget_exceeded"
    assert error.retry_after is not None
    assert abs(error.retry_after - max(1.0, (first - now).total_seconds())) < 5


async def test_limiter_names_the_blocking_limit_that_frees_last(make_limiter: MakeLimiter) -> None:
    """When rpm and the monthly budget both block, the 429 is the budget's, with its wait."""
    limiter = make_limiter(rpm_window_secs=60)
    policy = KeyPolicy(rpm=1, budget_usd_per_month=0.5)
    await limiter.admit("k1", policy)
    await limiter.record_usage("k1", policy, tokens=1, cost_usd=0.5)
    error = await _refused(limiter, policy)
    assert error.error_type == "budget_exceeded"
    assert error.retry_after is not None and error.retry_after > 60


async def test_limiter_fetch_rpm_is_a_bucket_of_its_own(make_limiter: MakeLimiter) -> None:
    """Page fetches have their own per-key limit that neither spends nor blocks model rpm."""
    limiter = make_limiter(fetch_rpm=2)
    await limiter.check_fetch("k1")
    await limiter.check_fetch("k1")
    with pytest.raises(LimitExceeded) as caught:
        await limiter.check_fetch("k1")
    assert caught.value.error_type == "fetch_rpm_exceeded"
    assert caught.value.retry_after is not None and caught.value.retry_after > 55
    assert (await limiter.admit("k1", KeyPolicy(rpm=1))).state.requests_remaining == 0
    await limiter.check_fetch("k2")


async def test_limiter_usage_reports_tokens_cost_and_running(make_limiter: MakeLimiter) -> None:
    """usage() shows tokens today, dollars this month and running requests, limits or not."""
    limiter = make_limiter()
    await limiter.admit("k1", KeyPolicy())
    await limiter.record_usage("k1", KeyPolicy(), tokens=1200, cost_usd=0.0125)
    await limiter.record_usage("k1", KeyPolicy(), tokens=300, cost_usd=None)
    assert await limiter.usage("k1") == {
        "tokens_today": 1500,
        "cost_usd_this_month": 0.0125,
        "running": 1,
    }
    assert await limiter.usage("unused") == {
        "tokens_today": 0,
        "cost_usd_this_month": 0.0,
        "running": 0,
    }


def test_limiter_refuses_a_redis_url_of_another_scheme_without_echoing_it() -> None:
    """A non-Redis CCGATE_REDIS_URL is a ValueError that never shows its password."""
    with pytest.raises(ValueError, match="redis://") as caught:
        Limiter(redis_url="http://user:hunter2@cache:6379")
    assert "hunter2" not in str(caught.value)


def test_rate_headers_native_and_openai_use_x_ratelimit_names() -> None:
    """The native and OpenAI doors get OpenAI's header names and duration style."""
    state = RateState(
        requests_limit=60,
        requests_remaining=59,
        requests_reset_secs=0.4,
        tokens_limit=1000,
        tokens_remaining=250,
        tokens_reset_secs=360,
    )
    expected = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "250",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert rate_headers("native", state) == expected
    assert rate_headers("openai", state) == expected
    assert [openai_duration(s) for s in (0, 59.1, 3605)] == ["0s", "1m0s", "1h0m5s"]


def test_rate_headers_anthropic_uses_its_names_and_rfc3339_reset_times() -> None:
    """The Anthropic door gets anthropic-ratelimit-* headers with UTC timestamps as resets."""
    state = RateState(
        requests_limit=5,
        requests_remaining=4,
        requests_reset_secs=30,
        tokens_limit=100,
        tokens_remaining=0,
        tokens_reset_secs=3600,
    )
    headers = rate_headers("anthropic", state)
    reset = datetime.strptime(
        headers["anthropic-ratelimit-requests-reset"], "%Y-%m-%dT%H:%M:%SZ"
    ).replace(tzinfo=UTC)
    assert abs((reset - datetime.now(UTC)).total_seconds() - 30) < 2
    assert headers["anthropic-ratelimit-requests-limit"] == "5"
    assert headers["anthropic-ratelimit-requests-remaining"] == "4"
    assert headers["anthropic-ratelimit-tokens-remaining"] == "0"
    assert headers["anthropic-ratelimit-tokens-reset"].endswith("Z")
    assert not any(name.startswith("x-ratelimit") for name in headers)


async def test_rate_headers_leave_out_limits_the_key_does_not_have(
    make_limiter: MakeLimiter,
) -> None:
    """A key without limits gets no headers; one with only rpd reports rpd, no token trio."""
    limiter = make_limiter()
    assert rate_headers("openai", (await limiter.admit("k1", KeyPolicy())).state) == {}
    headers = rate_headers("native", (await limiter.admit("k2", KeyPolicy(rpd=10))).state)
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert headers["x-ratelimit-remaining-requests"] == "9"
    assert not any(name.endswith("-tokens") for name in headers)


async def test_limit_exceeded_renders_its_headers_for_the_anthropic_door(
    make_limiter: MakeLimiter,
) -> None:
    """A 429 carries the rate state and can switch its headers to the Anthropic names."""
    limiter = make_limiter()
    await limiter.admit("k1", KeyPolicy(rpm=1))
    error = (await _refused(limiter, KeyPolicy(rpm=1))).use_door("anthropic")
    assert error.state.requests_limit == 1 and error.state.requests_remaining == 0
    assert error.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert "x-ratelimit-limit-requests" not in error.headers
    with pytest.raises(ValueError, match="door"):
        rate_headers("grpc", error.state)


# -- reservations: budgets and token quotas hold under concurrency ---------------------------

# 100 input tokens and 300 output tokens on sonnet: 3 x 100 + 15 x 300 = 4,800 micro-dollars.
SONNET_RUN = RunEstimate("claude-sonnet-4-5", input_tokens=100, max_output_tokens=300)


async def _admit_all(
    limiter: Limiter, policy: KeyPolicy, estimate: RunEstimate, count: int = 8
) -> tuple[list[Admission], list[LimitExceeded]]:
    """Admit ``count`` requests at once; the admitted ones and the refusals."""
    outcomes = await asyncio.gather(
        *(limiter.admit("k1", policy, estimate) for _ in range(count)), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, LimitExceeded)]
    admitted = [o for o in outcomes if isinstance(o, Admission)]
    assert len(admitted) + len(refused) == count
    return admitted, refused


@pytest.mark.parametrize(("budget", "fits"), [(0.005, 1), (0.012, 2), (0.05, 8)])
async def test_limiter_budget_admits_only_the_concurrent_requests_that_fit(
    make_limiter: MakeLimiter, budget: float, fits: int
) -> None:
    """Eight requests at once against a budget worth ``fits`` of them: exactly ``fits`` are
    admitted, the others get budget_exceeded with a short Retry-After."""
    admitted, refused = await _admit_all(
        make_limiter(), KeyPolicy(budget_usd_per_month=budget), SONNET_RUN
    )
    assert len(admitted) == fits
    assert all(e.error_type == "budget_exceeded" and e.retry_after == 1.0 for e in refused)
    assert all("held by its running requests" in e.message for e in refused)


async def test_limiter_tokens_per_day_admits_only_the_concurrent_requests_that_fit(
    make_limiter: MakeLimiter,
) -> None:
    """Eight requests of 400 tokens at once against 1,000 tokens a day: two are admitted."""
    admitted, refused = await _admit_all(make_limiter(), KeyPolicy(tokens_per_day=1000), SONNET_RUN)
    assert len(admitted) == 2
    assert {e.error_type for e in refused} == {"tokens_per_day_exceeded"}


async def test_limiter_settles_the_real_spend_and_frees_the_reservation(
    make_limiter: MakeLimiter,
) -> None:
    """Settling counts the run's real tokens and cost, not its estimate, and frees its
    reservation for the next request."""
    limiter = make_limiter()
    policy = KeyPolicy(budget_usd_per_month=0.006, tokens_per_day=10_000)
    first = await limiter.admit("k1", policy, SONNET_RUN)
    assert (await _refused(limiter, policy)).error_type == "budget_exceeded"
    await first.settle(tokens=150, cost_usd=0.0009)
    assert await limiter.usage("k1") == {
        "tokens_today": 150,
        "cost_usd_this_month": 0.0009,
        "running": 0,
    }
    assert (await limiter.admit("k1", policy, SONNET_RUN)).held


async def test_limiter_reservation_is_released_when_the_request_fails(
    make_limiter: MakeLimiter,
) -> None:
    """A request that ends without usage (failed, cancelled) gives its reservation back and
    spends nothing."""
    limiter = make_limiter()
    policy = KeyPolicy(budget_usd_per_month=0.005)
    failed = await limiter.admit("k1", policy, SONNET_RUN)
    await _refused(limiter, policy)
    await failed.release()
    await failed.release()
    admitted, _ = await _admit_all(limiter, policy, SONNET_RUN)
    assert len(admitted) == 1
    assert (await limiter.usage("k1"))["cost_usd_this_month"] == 0


async def test_limiter_reserves_the_keys_average_cost_when_it_is_more(
    make_limiter: MakeLimiter,
) -> None:
    """Runs that cost more than their estimate (a CLI run's own prompt) raise the
    reservation of the key's next requests to its average per run."""
    limiter = make_limiter()
    policy = KeyPolicy(budget_usd_per_month=1.0)
    for _ in range(2):
        run = await limiter.admit("k1", policy, SONNET_RUN)
        await run.settle(tokens=20_000, cost_usd=0.3)
    admitted, refused = await _admit_all(limiter, policy, SONNET_RUN)
    assert len(admitted) == 1 and refused[0].error_type == "budget_exceeded"
    assert "may cost $0.3" in refused[0].message


async def test_limiter_request_that_spends_nothing_ignores_quotas(
    make_limiter: MakeLimiter,
) -> None:
    """A request admitted with spends=False (count_tokens) is neither refused nor reserved by
    a spent budget, but still counts against rpm."""
    limiter = make_limiter()
    policy = KeyPolicy(budget_usd_per_month=0.001, rpm=2)
    await limiter.record_usage("k1", policy, tokens=10, cost_usd=0.002)
    assert (await _refused(limiter, policy)).error_type == "budget_exceeded"
    free = await limiter.admit("k1", policy, spends=False)
    assert free.held == () and free.state.requests_remaining == 1


async def test_limiter_key_without_limits_reads_no_counters(
    make_limiter: MakeLimiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key with no limits (and no global rpd) is admitted on its running slot alone, and its
    spend is still counted when it settles."""
    limiter = make_limiter()

    async def unread(*_: object) -> list[int]:
        raise AssertionError("counters read for a key with nothing to test")

    monkeypatch.setattr(limiter._counters, "values", unread)
    admission = await limiter.admit("k1", KeyPolicy(), RunEstimate("claude-sonnet-4-5", 100))
    assert admission.state == RateState() and (await limiter.usage("k1"))["running"] == 1
    await admission.settle(tokens=40, cost_usd=0.5)
    assert await limiter.usage("k1") == {
        "tokens_today": 40,
        "cost_usd_this_month": 0.5,
        "running": 0,
    }


async def test_limiter_global_rpd_applies_to_a_key_without_limits(
    make_limiter: MakeLimiter,
) -> None:
    """The unlimited fast path is not taken while the server has a global rpd."""
    limiter = make_limiter(global_rpd=1)
    await limiter.admit("k1", KeyPolicy())
    assert (await _refused(limiter, KeyPolicy(), "k2")).error_type == "global_rpd_exceeded"


async def test_limiter_spend_counts_into_the_new_day_and_month_once_they_begin(
    make_limiter: MakeLimiter, clock: ManualClock
) -> None:
    """A run settled just after midnight UTC counts into the new day's tokens, and just after
    the month turns into the new month's budget, however many runs came before."""
    clock.advance((datetime(2031, 1, 31, 23, 59, 59, tzinfo=UTC) - clock.now()).total_seconds())
    limiter = make_limiter()
    for _ in range(3):  # settled on the same day
        await (await limiter.admit("k1", KeyPolicy())).settle(tokens=10, cost_usd=0.25)
    assert await limiter.usage("k1") == {
        "tokens_today": 30,
        "cost_usd_this_month": 0.75,
        "running": 0,
    }
    clock.advance(1)  # 2031-02-01 00:00:00: a new day and a new month
    await (await limiter.admit("k1", KeyPolicy())).settle(tokens=7, cost_usd=0.5)
    assert await limiter.usage("k1") == {
        "tokens_today": 7,
        "cost_usd_this_month": 0.5,
        "running": 0,
    }
    clock.advance(86400)  # the next day, the same month
    await (await limiter.admit("k1", KeyPolicy())).settle(tokens=5, cost_usd=0.5)
    assert await limiter.usage("k1") == {
        "tokens_today": 5,
        "cost_usd_this_month": 1.0,
        "running": 0,
    }
