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

from ccgate.runners.base import RunRequest, collect
from ccgate.runners.cli_command import CliOptions
from ccgate.runners.pool import PoolConfig
from ccgate.runners.pooled_cli import PooledCliRunner
from tests.support.fake_claude_factory import make_fake_claude

MakePool = Callable[..., PooledCliRunner]


@pytest.fixture
async def make_pool(tmp_path: Path) -> AsyncIterator[MakePool]:
    """Factory: a reuse-mode pool on the fake claude (records in tmp_path/record.jsonl)."""
    made: list[PooledCliRunner] = []
    executable = make_fake_claude(tmp_path / "bin", "text", record=str(tmp_path / "record.jsonl"))

    def make(**config: Any) -> PooledCliRunner:
        options = CliOptions(executable=str(executable), work_dir=str(tmp_path),
                             base_env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
                             kill_grace_secs=0.5)
        made.append(PooledCliRunner(options, PoolConfig(
            mode="reuse", janitor_interval_secs=0.05, **config)))
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


async def ask(runner: PooledCliRunner, text: str) -> str:
    """Run `text` for owner key-a; return the answer."""
    return (await collect(runner, RunRequest.from_text(text, "haiku", owner="key-a"))).text


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
