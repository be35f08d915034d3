"""What the real claude CLI is given and leaves behind: system prompts as files, no argv
text, no project directories left in its config directory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ccgate.runners.base import RunRequest, RunResult, collect
from ccgate.runners.cli import ClaudeCliRunner
from ccgate.runners.cli_command import CliOptions
from ccgate.runners.pool import PoolConfig
from ccgate.runners.pooled_cli import PooledCliRunner
from tests.e2e.conftest import system_texts
from tests.support.fake_anthropic import Echo, FakeAnthropic, cli_env

pytestmark = pytest.mark.real_cli

# Past the 128 KiB a single argv string may hold on Linux.
BIG_SYSTEM_PROMPT = "SYSTEM-START " + "rule " * 40_000 + " SYSTEM-END"


@pytest.fixture
def options(fake: FakeAnthropic, home: Path, work_dir: Path, claude_path: Path) -> CliOptions:
    """Options running the real CLI against the fake, its config dir in the test's HOME."""
    fake.default = Echo()
    return CliOptions(
        executable=str(claude_path),
        base_env=cli_env(fake, home),
        kill_grace_secs=1.0,
        work_dir=str(work_dir),
        upstream_retries=0,
    )


@pytest.fixture
async def make_pool(options: CliOptions) -> AsyncIterator[Callable[[str], PooledCliRunner]]:
    """Factory: a pool in `mode` over `options`; closed at teardown."""
    made: list[PooledCliRunner] = []

    def make(mode: str) -> PooledCliRunner:
        made.append(PooledCliRunner(options, PoolConfig(mode=mode, janitor_interval_secs=0.1)))
        return made[-1]

    yield make
    for runner in made:
        await runner.aclose()


async def _ask(runner: ClaudeCliRunner | PooledCliRunner, text: str, **request: str) -> RunResult:
    return await collect(
        runner, RunRequest.from_text(text, "haiku", owner="key-a", timeout_secs=60, **request)
    )


async def _idle_pid(runner: PooledCliRunner) -> int:
    deadline = time.monotonic() + 20
    while not runner.pool.idle_processes():
        assert time.monotonic() < deadline, "the pool never warmed a process"
        await asyncio.sleep(0.05)
    return runner.pool.idle_processes()[0].pid


def _cmdline(pid: int) -> bytes:
    """What any local user reads as the argv of `pid`."""
    return Path(f"/proc/{pid}/cmdline").read_bytes()


async def test_cli_system_prompt_of_200_kib_is_honoured(
    options: CliOptions, fake: FakeAnthropic
) -> None:
    """A 200 KiB system prompt and an appended one run cold and reach the upstream `system`."""
    runner = ClaudeCliRunner(options)

    result = await _ask(
        runner, "hello", system_prompt=BIG_SYSTEM_PROMPT, append_system_prompt="APPENDED-RULE"
    )
    await runner.aclose()

    assert result.text == "hello"
    [request] = fake.message_requests()
    system = "\n".join(system_texts(request.body))
    assert BIG_SYSTEM_PROMPT in system and "APPENDED-RULE" in system


async def test_cli_warm_process_keeps_its_system_prompt_out_of_argv(
    make_pool: Callable[[str], PooledCliRunner], fake: FakeAnthropic
) -> None:
    """A warm process holds a 200 KiB system prompt without it in /proc/<pid>/cmdline, and
    serves it to the upstream."""
    runner = make_pool("fresh")
    await _ask(runner, "warm-up", system_prompt=BIG_SYSTEM_PROMPT)
    pid = await _idle_pid(runner)

    cmdline = _cmdline(pid)
    result = await _ask(runner, "served warm", system_prompt=BIG_SYSTEM_PROMPT)

    assert b"SYSTEM-START" not in cmdline and b"--system-prompt-file" in cmdline
    assert result.text == "served warm" and runner.stats()["hits"] == 1
    assert BIG_SYSTEM_PROMPT in "\n".join(system_texts(fake.message_requests()[-1].body))


async def test_cli_runs_leave_no_project_directory_behind(
    options: CliOptions, make_pool: Callable[[str], PooledCliRunner], home: Path
) -> None:
    """After cold runs and warm ones (retired and reset), the CLI's `projects/` is empty."""
    cold = ClaudeCliRunner(options)
    for n in range(3):
        await _ask(cold, f"cold {n}")
    await cold.aclose()
    for mode in ("fresh", "reuse"):
        runner = make_pool(mode)
        for n in range(3):
            await _ask(runner, f"{mode} {n}")
            await _idle_pid(runner)
        await runner.aclose()

    projects = home / ".claude" / "projects"
    assert projects.is_dir()  # the CLI made it, so the runs above really used this config dir
    assert sorted(p.name for p in projects.iterdir()) == []
