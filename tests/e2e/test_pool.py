"""The warm pool running the real claude CLI against the fake Anthropic API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ccgate.runners.base import RunError, RunRequest, RunResult, TextDelta, collect
from ccgate.runners.cli_command import CliOptions
from ccgate.runners.pool import PoolConfig
from ccgate.runners.pooled_cli import PooledCliRunner
from tests.e2e.conftest import StartServer, keyed_client, user_texts, wait_until
from tests.support.fake_anthropic import Echo, Error, FakeAnthropic, Slow, cli_env
from tests.support.server import processes_under

pytestmark = pytest.mark.real_cli

MakePool = Callable[..., PooledCliRunner]


@pytest.fixture
async def make_pool(
    fake: FakeAnthropic, home: Path, work_dir: Path, claude_path: Path
) -> AsyncIterator[MakePool]:
    """Factory: `make_pool(mode, **PoolConfig fields)`; every pool is closed at teardown."""
    fake.default = Echo()
    made: list[PooledCliRunner] = []

    def make(mode: str, **config: Any) -> PooledCliRunner:
        options = CliOptions(
            executable=str(claude_path),
            base_env=cli_env(fake, home),
            kill_grace_secs=1.0,
            work_dir=str(work_dir),
            upstream_retries=0,
        )
        config.setdefault("janitor_interval_secs", 0.1)
        made.append(PooledCliRunner(options, PoolConfig(mode=mode, **config)))
        return made[-1]

    yield make
    for runner in made:
        await runner.aclose()


async def ask(runner: PooledCliRunner, text: str, owner: str = "key-a") -> RunResult:
    """Run one prompt for `owner` to its result."""
    return await collect(runner, RunRequest.from_text(text, "haiku", owner=owner, timeout_secs=60))


async def warm(runner: PooledCliRunner, owner: str = "key-a", count: int = 1) -> list[int]:
    """Wait until `owner` has `count` idle processes; return their pids."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = [p.pid for p in runner.pool.idle_processes() if p.key.owner == owner]
        if len(pids) >= count:
            return pids
        await asyncio.sleep(0.05)
    raise AssertionError(f"the pool never warmed {count} process(es) for {owner}")


def upstream_bodies(fake: FakeAnthropic) -> list[str]:
    """Every upstream Messages request body, as JSON text."""
    return [json.dumps(r.body) for r in fake.message_requests()]


async def test_pool_hit_answers_correctly(make_pool: MakePool) -> None:
    """After a first (cold) request warms the owner, the next one is a hit with the right answer."""
    runner = make_pool("fresh")
    first = await ask(runner, "first question")
    await warm(runner)

    second = await ask(runner, "second question")

    assert (first.text, second.text) == ("first question", "second question")
    stats = runner.stats()
    assert (stats["misses"], stats["hits"], stats["spawns"]) == (1, 1, 2)


async def test_pool_miss_falls_back_to_cold(make_pool: MakePool, fake: FakeAnthropic) -> None:
    """With nothing warm for the key (or no key at all) the cold path answers."""
    runner = make_pool("reuse")

    keyed = await ask(runner, "nothing warm yet", owner="key-new")
    anonymous = await collect(runner, RunRequest.from_text("no owner", "haiku"))

    assert (keyed.text, anonymous.text) == ("nothing warm yet", "no owner")
    stats = runner.stats()
    assert (stats["hits"], stats["misses"], stats["bypasses"]) == (0, 1, 1)
    assert len(fake.message_requests()) == 2


async def test_pool_never_hands_a_process_to_another_key(
    make_pool: MakePool, fake: FakeAnthropic
) -> None:
    """Processes, CLI sessions and upstream requests of key A and key B never mix."""
    runner = make_pool("reuse", max_processes=4)
    served: dict[str, set[str]] = {"key-a": set(), "key-b": set()}
    pids: dict[str, set[int]] = {"key-a": set(), "key-b": set()}
    for round_ in range(3):
        for owner in served:
            result = await ask(runner, f"{owner} round {round_}", owner=owner)
            served[owner].add(str(result.session_id))
            pids[owner].update(await warm(runner, owner))

    assert runner.stats()["hits"] == 4
    assert not pids["key-a"] & pids["key-b"]
    assert not served["key-a"] & served["key-b"]
    for request in fake.message_requests():
        owners = {t.split()[0] for t in user_texts(request.body) if t.startswith("key-")}
        session = request.headers["x-claude-code-session-id"]
        assert len(owners) == 1 and session in served[owners.pop()]


async def test_pool_reuse_reset_forgets_every_earlier_secret(
    make_pool: MakePool, fake: FakeAnthropic
) -> None:
    """20 secrets through one process: no upstream call sees an older one, nor any tool."""
    runner = make_pool("reuse", max_processes=1)
    await ask(runner, "warm-up")
    [pid] = await warm(runner)
    fake.reset()
    secrets = [f"SECRET-{n:02d}-{os.urandom(4).hex()}" for n in range(20)]

    answers = [(await ask(runner, secret)).text for secret in secrets]

    assert answers == secrets
    assert await warm(runner) == [pid]
    bodies = upstream_bodies(fake)
    assert len(bodies) == 20
    for n, body in enumerate(bodies):
        assert secrets[n] in body and not any(s in body for s in secrets[:n])
    assert runner.stats()["resets"] >= 20
    assert all(r.body.get("tools") == [] for r in fake.message_requests())


async def test_pool_cancel_mid_stream_never_serves_half_a_turn(
    make_pool: MakePool, fake: FakeAnthropic
) -> None:
    """Cancelling a slow stream interrupts it; the next request gets a clean, correct answer."""
    runner = make_pool("reuse", max_processes=1)
    await ask(runner, "warm-up")
    await warm(runner)
    fake.reply(Slow("one two three four five six", delay=0.4, chunks=6))
    request = RunRequest.from_text("SLOW-SECRET", "haiku", owner="key-a", timeout_secs=60)
    async with contextlib.aclosing(runner.run(request)) as events:
        async for event in events:
            if isinstance(event, TextDelta):
                break

    after = await ask(runner, "after the cancel")

    assert after.text == "after the cancel"
    assert "SLOW-SECRET" not in upstream_bodies(fake)[-1]
    assert runner.stats()["interrupts"] == 1
    # The interrupted process is reset or retired in the background (on a busy machine the
    # next request may be served before that ends): wait for it, within a bound.
    deadline = time.monotonic() + 20
    while runner.stats()["resets"] + runner.stats()["retirements"] < 1:
        assert time.monotonic() < deadline, runner.stats()
        await asyncio.sleep(0.05)


async def test_pool_upstream_error_retires_the_process(
    make_pool: MakePool, fake: FakeAnthropic
) -> None:
    """A turn that fails upstream retires its process instead of returning it to the pool."""
    runner = make_pool("reuse", max_processes=2)
    await ask(runner, "warm-up")
    [pid] = await warm(runner)
    fake.reply(Error(401, "authentication_error", "invalid x-api-key"))

    with pytest.raises(RunError, match="not logged in"):
        await ask(runner, "this one fails")

    assert pid not in await warm(runner)
    assert runner.stats()["retirements"] >= 1


async def test_pool_idle_process_that_dies_is_replaced(make_pool: MakePool) -> None:
    """A pooled process killed while idle is noticed, retired and replaced by a new one."""
    runner = make_pool("fresh")
    await ask(runner, "warm-up")
    [pid] = await warm(runner)

    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (await warm(runner))[0] == pid:
        await asyncio.sleep(0.05)

    assert (await warm(runner))[0] != pid
    assert runner.stats()["retirements"] >= 1
    assert (await ask(runner, "still served")).text == "still served"


def test_pool_serve_uses_the_pool_and_stops_it_on_shutdown(
    start_server: StartServer, server_env: dict[str, str], fake: FakeAnthropic, work_dir: Path
) -> None:
    """`ccgate serve` with CCGATE_POOL_MODE=reuse warms a process per key and ends it on stop."""
    fake.default = Echo()
    server = start_server(server_env, CCGATE_POOL_MODE="reuse")
    with keyed_client(server) as http:
        first = http.post("/api/v1/run", json={"prompt": "first through serve"})
        assert wait_until(lambda: bool(pooled_pids(work_dir)), 20)
        second = http.post("/api/v1/run", json={"prompt": "second through serve"})

    assert [r.json()["result"] for r in (first, second)] == [
        "first through serve",
        "second through serve",
    ]
    assert "first through serve" not in upstream_bodies(fake)[-1]
    server.stop()
    assert processes_under(work_dir) == []


def pooled_pids(work_dir: Path) -> list[int]:
    """Pids of CLI processes running in a pool directory under `work_dir`."""
    return [
        pid
        for pid in processes_under(work_dir)
        if "ccgate-pool-" in os.readlink(f"/proc/{pid}/cwd")
    ]
