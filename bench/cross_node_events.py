"""Event latency across nodes: Redis pub/sub vs PostgreSQL NOTIFY vs the store poll.

    .venv/bin/python -m bench.cross_node_events --events 200

Two event hubs (two "nodes") share one fresh PostgreSQL database; each notifier is measured
in turn. Node A publishes the chunks of a running job at a steady pace; a subscriber on node B
notes when each arrives. The latency of an event is its arrival on B minus its publish on A.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from datetime import timedelta

from tests.conftest import POSTGRES_URL, REDIS_URL, fresh_postgres_database

from bench.harness import machine_line
from ccgate.clock import utcnow
from ccgate.events import JobEventHub
from ccgate.notify import Notifier, PollNotifier, RedisNotifier
from ccgate.store import Store
from ccgate.store.listen import PostgresNotifier


async def measure(url: str, make: Callable[[], Notifier], events: int, pace: float) -> list[float]:
    """Publish ``events`` chunks on node A; return each one's latency (ms) on node B."""
    store_a, store_b = await Store.open(url), await Store.open(url, migrate=False)
    hub_a, hub_b = JobEventHub(store_a, make()), JobEventHub(store_b, make())
    await hub_a.start()
    await hub_b.start()
    job_id = f"job_bench{time.monotonic_ns()}"
    now = utcnow()
    await store_a.jobs.insert(
        job_id=job_id,
        key_id=None,
        door="native",
        model="sonnet",
        request={"prompt": "x"},
        metadata=None,
        now=now,
        callback_url=None,
        idempotency_key=None,
        request_hash=None,
        max_queued=100,
        session_id=None,
        retry_at=None,
        claim_for="bench",
        lease_until=now + timedelta(seconds=60),
    )
    sent: dict[int, float] = {}
    got: dict[int, float] = {}
    try:
        hub_a.begin(job_id, next_seq=1)

        async def read() -> None:
            async for event in hub_b.subscribe(job_id):
                if event is not None:
                    got[event.seq] = time.perf_counter()
                    if event.seq == events:
                        return

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.3)  # let B's watch reach the notifier
        for _ in range(events):
            event = hub_a.publish(job_id, "chunk", {"text": "x"})
            assert event is not None
            sent[event.seq] = time.perf_counter()
            await asyncio.sleep(pace)
        await asyncio.wait_for(reader, 30)
    finally:
        for hub in (hub_a, hub_b):
            await hub.stop()
        await store_a.close()
        await store_b.close()
    return [(got[seq] - sent[seq]) * 1000 for seq in sent]


async def main(events: int, pace: float) -> None:
    """Measure every notifier and print p50/p95/max per notifier."""
    print(machine_line())
    kinds: dict[str, Callable[[], Notifier]] = {
        "redis": lambda: RedisNotifier(REDIS_URL),
        "postgresql": lambda: PostgresNotifier(POSTGRES_URL),
        "poll": PollNotifier,
    }
    async with fresh_postgres_database(POSTGRES_URL) as url:
        kinds["postgresql"] = lambda: PostgresNotifier(url)
        print(f"{'notifier':<11} {'events':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
        for name, make in kinds.items():
            lags = sorted(await measure(url, make, events, pace))
            p95 = lags[int(len(lags) * 0.95) - 1]
            print(
                f"{name:<11} {len(lags):>6} {statistics.median(lags):>8.2f} {p95:>8.2f} "
                f"{lags[-1]:>8.2f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200, help="chunks published per notifier")
    parser.add_argument("--pace", type=float, default=0.02, help="seconds between chunks")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.pace))
