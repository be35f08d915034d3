"""The pooled runner on the fake claude: resets, request limits and unexpected output."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ccgate.runners.base import RunError, RunRequest, collect
from ccgate.runners.cli_command import CliOptions
from ccgate.runners.pool import PoolConfig
from ccgate.runners.pooled_cli import PooledCliRunner
from ccgate.runners.run_dir import SystemPrompts
from tests.support.fake_claude_factory import make_fake_claude

MakePool = Callable[..., PooledCliRunner]


@pytest.fixture
async def make_pool(tmp_path: Path) -> AsyncIterator[MakePool]:
    """Factory: a reuse-mode pool on the fake claude (records in tmp_path/record.jsonl)."""
    made: list[PooledCliRunner] = []
    executable = make_fake_claude(tmp_path / "bin", "text", record=str(tmp_path / "record.jsonl"))

    def make(**config: Any) -> PooledCliRunner:
        options = CliOptions(
            executable=str(executable),
            work_dir=str(tmp_path),
            base_env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
            kill_grace_secs=0.5,
        )
        made.append(
            PooledCliRunner(options, PoolConfig(mode="reuse", janitor_interval_secs=0.05, **config))
        )
        return made[-1]

    yield make
    for runner in made:
        await runner.aclose()


def turns(tmp_path: Path) -> list[dict[str, Any]]:
    """The fake's per-turn records, oldest first."""
    lines = (tmp_path / "record.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


async def idle_pids(runner: PooledCliRunner, count: int = 1) -> list[int]:
    """Wait until the pool holds `count` idle processes; return their pids."""
    deadline = time.monotonic() + 10
    while len(runner.pool.idle_processes()) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return [p.pid for p in runner.pool.idle_processes()]


async def ask(
    runner: PooledCliRunner, text: str, owner: str = "key-a", system_prompt: str | None = None
) -> str:
    """Run `text` for `owner` (key-a) with `system_prompt`; return the answer."""
    request = RunRequest.from_text(text, "haiku", owner=owner, system_prompt=system_prompt)
    return (await collect(runner, request)).text


async def settled(runner: PooledCliRunner, idle: int) -> None:
    """Wait until nothing is starting and `idle` processes are idle."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = runner.stats()
        if stats["starting"] == 0 and stats["idle"] == idle:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the pool never settled at {idle} idle: {runner.stats()}")


def idle_prompts(runner: PooledCliRunner) -> set[tuple[str, str]]:
    """(owner, prompts hash) of every idle process."""
    return {(p.key.owner, p.key.prompts_sha256) for p in runner.pool.idle_processes()}


def digest(system_prompt: str) -> str:
    """The pool key hash of a request with `system_prompt` alone."""
    return SystemPrompts(system_prompt).digest()


async def test_pool_runner_resets_between_requests_and_retires_at_the_limit(
    make_pool: MakePool, tmp_path: Path
) -> None:
    """A process gets /clear between its requests and is retired after max_requests."""
    runner = make_pool(max_requests=2)
    await ask(runner, "warm")
    [pid] = await idle_pids(runner)
    for text in ("one", "two"):
        await ask(runner, text)

    [new_pid] = await idle_pids(runner)

    assert new_pid != pid
    assert [t["scenario"] for t in turns(tmp_path) if t["pid"] == pid] == ["text", "clear", "text"]
    assert runner.stats()["resets"] == 1


async def test_pool_runner_retires_a_process_that_prints_unexpected_lines(
    make_pool: MakePool, tmp_path: Path
) -> None:
    """Garbage on stdout still lets the turn finish, but the process is never reused."""
    runner = make_pool()
    await ask(runner, "warm")
    [pid] = await idle_pids(runner)

    answer = await ask(runner, "#fake: garbage\nnoisy")

    assert answer
    [new_pid] = await idle_pids(runner)
    assert new_pid != pid
    assert "clear" not in [t["scenario"] for t in turns(tmp_path) if t["pid"] == pid]
    assert runner.stats()["resets"] == 0


async def test_pool_runner_forgets_the_least_recent_keys_of_an_owner(
    make_pool: MakePool,
) -> None:
    """Past max_keys_per_owner distinct system prompts, the oldest key's processes go."""
    runner = make_pool(max_keys_per_owner=2, max_processes=8, concurrency=8)
    for prompt in ("first", "second", "third"):
        await ask(runner, "hi", system_prompt=prompt)
        await settled(runner, idle=min(2, ["first", "second", "third"].index(prompt) + 1))

    assert idle_prompts(runner) == {("key-a", digest("second")), ("key-a", digest("third"))}
    assert {k.prompts_sha256 for k in runner.pool.tracked_keys()} == {
        digest("second"),
        digest("third"),
    }
    assert runner.stats()["forgotten_keys"] == 1


async def test_pool_runner_bounds_the_keys_of_all_owners(make_pool: MakePool) -> None:
    """Past max_keys keys over all owners, the least recently used one is forgotten."""
    runner = make_pool(max_keys=2, max_processes=8, concurrency=8)
    for count, owner in enumerate(("key-a", "key-b", "key-c"), start=1):
        await ask(runner, "hi", owner=owner)
        await settled(runner, idle=min(2, count))

    assert {owner for owner, _ in idle_prompts(runner)} == {"key-b", "key-c"}
    assert {k.owner for k in runner.pool.tracked_keys()} == {"key-b", "key-c"}


async def test_pool_runner_drops_every_trace_of_a_key_gone_idle(make_pool: MakePool) -> None:
    """Once a key's processes expired and nobody asked again, the pool keeps nothing of it."""
    runner = make_pool(idle_secs=0.3)
    await ask(runner, "hi", system_prompt="SECRET-PROMPT")
    await idle_pids(runner)

    deadline = time.monotonic() + 10
    while runner.pool.tracked_keys() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)

    assert runner.pool.tracked_keys() == set()
    assert runner.stats()["keys"] == 0 and runner.stats()["idle"] == 0


async def test_pool_runner_spawn_failure_leaves_no_directory(tmp_path: Path) -> None:
    """A warm process that cannot start (a NUL in the CLI path) removes its directory."""
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    options = CliOptions(
        executable="/usr/bin/claude\0",
        work_dir=str(work_dir),
        base_env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )
    runner = PooledCliRunner(options, PoolConfig(mode="fresh", janitor_interval_secs=0.05))
    try:
        with pytest.raises(RunError):
            await ask(runner, "hi", system_prompt="terse")
        deadline = time.monotonic() + 5
        while runner.stats()["spawn_failures"] < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        await runner.aclose()

    assert runner.stats()["spawn_failures"] >= 2
    assert list(work_dir.iterdir()) == []
