"""The Limiter on Redis: separate Limiter instances and separate processes share every count."""

from __future__ import annotations

import asyncio
import secrets
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ccgate.clock import ManualClock
from ccgate.limits import Admission, Limiter, LimitExceeded, RunEstimate
from ccgate.policy import KeyPolicy
from tests.conftest import REDIS_URL, redis_problem, service_missing
from tests.support.clock import install_manual_clock

ROOT = Path(__file__).resolve().parents[2]

MakeNode = Callable[..., Limiter]

# Another ccgate node in its own OS process: three admits of k1 (rpd=4), one outcome a line.
_CHILD = textwrap.dedent("""
    import asyncio
    from ccgate.limits import Admission, Limiter, LimitExceeded, RunEstimate
    from ccgate.policy import KeyPolicy

    async def main():
        node = Limiter(redis_url={url!r}, key_prefix={prefix!r})
        for _ in range(3):
            try:
                await node.admit("k1", KeyPolicy(rpd=4))
                print("admitted")
            except LimitExceeded as exc:
                print(exc.error_type)
        await node.aclose()

    asyncio.run(main())
""")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """A clock that moves only when the test says, so windows and expiries pass at once."""
    return install_manual_clock(monkeypatch)


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of this test alone; its Redis keys are deleted afterwards."""
    problem = await redis_problem(REDIS_URL)
    if problem:
        service_missing(problem)
    from redis.asyncio import Redis

    name = f"ccgate-test-{secrets.token_hex(6)}"
    yield name
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{name}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def make_node(prefix: str) -> AsyncIterator[MakeNode]:
    """Build Limiters that play separate ccgate nodes sharing this test's Redis prefix."""
    built: list[Limiter] = []

    def build(**options: Any) -> Limiter:
        limiter = Limiter(**{"redis_url": REDIS_URL, "key_prefix": prefix, **options})
        built.append(limiter)
        return limiter

    yield build
    for limiter in built:
        await limiter.aclose()


async def _error(node: Limiter, policy: KeyPolicy, key_id: str = "k1") -> LimitExceeded:
    with pytest.raises(LimitExceeded) as caught:
        await node.admit(key_id, policy)
    return caught.value


async def test_redis_limiter_nodes_share_the_rpm_window(make_node: MakeNode) -> None:
    """rpm=3 spread over two nodes (one with the async+redis:// spelling) refuses the 4th."""
    first = make_node()
    second = make_node(redis_url=REDIS_URL.replace("redis://", "async+redis://", 1))
    policy = KeyPolicy(rpm=3)
    await first.admit("k1", policy)
    await second.admit("k1", policy)
    assert (await first.admit("k1", policy)).state.requests_remaining == 0
    assert (await _error(second, policy)).error_type == "rpm_exceeded"
    error = await _error(first, policy)
    assert error.retry_after is not None and 55 < error.retry_after <= 60


async def test_redis_limiter_rpm_window_frees_after_its_length(
    make_node: MakeNode, clock: ManualClock
) -> None:
    """On Redis too a spent one-second rpm window lets requests in again a second later."""
    node = make_node(rpm_window_secs=1)
    await node.admit("k1", KeyPolicy(rpm=1))
    await _error(node, KeyPolicy(rpm=1))
    clock.advance(1.1)
    await node.admit("k1", KeyPolicy(rpm=1))


async def test_redis_limiter_nodes_share_concurrency_slots(make_node: MakeNode) -> None:
    """A slot taken on one node is refused on the other until it is released, once."""
    first, second = make_node(), make_node()
    policy = KeyPolicy(concurrency=1)
    running = await first.admit("k1", policy)
    assert (await _error(second, policy)).error_type == "concurrency_exceeded"
    await running.release()
    await running.release()
    await second.admit("k1", policy)
    assert (await _error(first, policy)).error_type == "concurrency_exceeded"
    assert (await first.usage("k1"))["running"] == 1


async def test_redis_limiter_slots_of_a_crashed_node_expire(
    make_node: MakeNode, clock: ManualClock
) -> None:
    """A node that dies holding a slot blocks the key only until the slot's safety expiry,
    and its late release cannot free a slot someone else holds."""
    crashed, survivor = make_node(concurrency_ttl_secs=1), make_node(concurrency_ttl_secs=1)
    policy = KeyPolicy(concurrency=1)
    leaked = await crashed.admit("k1", policy)
    await _error(survivor, policy)
    clock.advance(1.6)
    await survivor.admit("k1", policy)
    await leaked.release()
    assert (await _error(survivor, policy)).error_type == "concurrency_exceeded"


async def test_redis_limiter_nodes_share_token_and_budget_quotas(make_node: MakeNode) -> None:
    """Usage recorded on one node refuses the key's next request on another."""
    first, second = make_node(), make_node()
    tokens, budget = KeyPolicy(tokens_per_day=100), KeyPolicy(budget_usd_per_month=0.02)
    await first.record_usage("t", tokens, tokens=100, cost_usd=None)
    await first.record_usage("b", budget, tokens=5, cost_usd=0.015)
    await first.record_usage("b", budget, tokens=5, cost_usd=0.005)
    assert (await _error(second, tokens, "t")).error_type == "tokens_per_day_exceeded"
    assert (await _error(second, budget, "b")).error_type == "budget_exceeded"
    assert await second.usage("b") == {
        "tokens_today": 10,
        "cost_usd_this_month": 0.02,
        "running": 0,
    }


async def test_redis_limiter_global_rpd_and_fetch_are_shared(make_node: MakeNode) -> None:
    """The global rpd and each key's fetch bucket count over all nodes."""
    first, second = make_node(global_rpd=2, fetch_rpm=1), make_node(global_rpd=2, fetch_rpm=1)
    await first.admit("a", KeyPolicy())
    await second.admit("b", KeyPolicy())
    assert (await _error(first, KeyPolicy(), "c")).error_type == "global_rpd_exceeded"
    await first.check_fetch("a")
    with pytest.raises(LimitExceeded) as caught:
        await second.check_fetch("a")
    assert caught.value.error_type == "fetch_rpm_exceeded"


async def test_redis_limiter_two_processes_share_the_rpd_window(
    make_node: MakeNode, prefix: str
) -> None:
    """Requests admitted by another OS process count against this process's rpd."""
    script = _CHILD.format(url=REDIS_URL, prefix=prefix)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(child.communicate(), 30)
    assert child.returncode == 0 and out.decode().split() == ["admitted"] * 3
    node = make_node()
    assert (await node.admit("k1", KeyPolicy(rpd=4))).state.requests_remaining == 0
    assert (await _error(node, KeyPolicy(rpd=4))).error_type == "rpd_exceeded"


# 100 input and 300 output tokens on sonnet: 4,800 micro-dollars, 400 tokens.
SONNET_RUN = RunEstimate("claude-sonnet-4-5", input_tokens=100, max_output_tokens=300)


async def _admit_at_once(
    nodes: list[Limiter], policy: KeyPolicy, count: int = 8
) -> tuple[list[Admission], list[LimitExceeded]]:
    """``count`` admissions at once, spread over ``nodes``."""
    outcomes = await asyncio.gather(
        *(nodes[i % len(nodes)].admit("k1", policy, SONNET_RUN) for i in range(count)),
        return_exceptions=True,
    )
    admitted = [o for o in outcomes if isinstance(o, Admission)]
    refused = [o for o in outcomes if isinstance(o, LimitExceeded)]
    assert len(admitted) + len(refused) == count, outcomes
    return admitted, refused


@pytest.mark.parametrize(("budget", "fits"), [(0.005, 1), (0.012, 2)])
async def test_redis_limiter_budget_admits_only_the_concurrent_requests_that_fit(
    make_node: MakeNode, budget: float, fits: int
) -> None:
    """Eight requests at once over two nodes against a budget worth ``fits`` of them:
    exactly ``fits`` are admitted; the rest get budget_exceeded."""
    admitted, refused = await _admit_at_once(
        [make_node(), make_node()], KeyPolicy(budget_usd_per_month=budget)
    )
    assert len(admitted) == fits
    assert {e.error_type for e in refused} == {"budget_exceeded"}


async def test_redis_limiter_tokens_per_day_admits_only_what_fits(make_node: MakeNode) -> None:
    """Eight requests of 400 tokens at once against 1,000 tokens a day: two are admitted."""
    admitted, refused = await _admit_at_once(
        [make_node(), make_node()], KeyPolicy(tokens_per_day=1000)
    )
    assert len(admitted) == 2
    assert {e.error_type for e in refused} == {"tokens_per_day_exceeded"}


async def test_redis_limiter_settles_real_spend_and_releases_reservations(
    make_node: MakeNode,
) -> None:
    """On Redis, a failed request frees its reservation, and a finished one's real spend
    (not its estimate) is what the other node sees."""
    first, second = make_node(), make_node()
    policy = KeyPolicy(budget_usd_per_month=0.006)
    failed = await first.admit("k1", policy, SONNET_RUN)
    assert (await _error(second, policy)).error_type == "budget_exceeded"
    await failed.release()
    finished = await second.admit("k1", policy, SONNET_RUN)
    await finished.settle(tokens=150, cost_usd=0.0009)
    assert await first.usage("k1") == {
        "tokens_today": 150,
        "cost_usd_this_month": 0.0009,
        "running": 0,
    }
    assert (await first.admit("k1", policy, SONNET_RUN)).held


async def test_redis_limiter_reservations_of_a_crashed_node_expire(
    make_node: MakeNode, clock: ManualClock
) -> None:
    """A node that dies holding a reservation blocks the budget only until it expires."""
    crashed, survivor = make_node(concurrency_ttl_secs=1), make_node(concurrency_ttl_secs=1)
    policy = KeyPolicy(budget_usd_per_month=0.005)
    await crashed.admit("k1", policy, SONNET_RUN)
    assert (await _error(survivor, policy)).error_type == "budget_exceeded"
    clock.advance(1.6)
    await survivor.admit("k1", policy, SONNET_RUN)
