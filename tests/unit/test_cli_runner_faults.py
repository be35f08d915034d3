"""The claude CLI runner when the CLI misbehaves: errors, crashes, noise, hangs, cancellation."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ccgate.runners.base import RunError, RunRequest, collect
from ccgate.runners.cli import ClaudeCliRunner
from ccgate.runners.cli_command import CliOptions
from ccgate.runners.process import STDERR_KEEP_BYTES

if TYPE_CHECKING:
    from tests.unit.conftest import FakeCli


def _dead(pid: int) -> bool:
    """True when ``pid`` no longer runs: gone from /proc, or a zombie nobody reaped yet."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except FileNotFoundError:
        return True
    return fields[0] == "Z"


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


async def _eventually(check: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _run_error(cli: FakeCli, **request: float) -> RunError:
    with pytest.raises(RunError) as caught:
        await collect(cli.runner, RunRequest.from_text("hi", "sonnet", **request))
    return caught.value


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(401, "upstream_auth_error"), (429, "upstream_rate_limited"), (529, "upstream_overloaded")],
)
async def test_runner_upstream_error_maps_to_its_type(
    fake_cli: Callable[..., FakeCli], status: int, error_type: str
) -> None:
    """An upstream HTTP failure in the result line becomes the documented error type."""
    error = await _run_error(fake_cli("upstream_error", status=status))
    assert error.error_type == error_type
    assert error.upstream_status == status
    assert f"({status})" in error.message or f"{status} " in error.message


async def test_runner_crash_reports_exit_code_and_last_stderr_line(
    fake_cli: Callable[..., FakeCli],
) -> None:
    """A CLI dying mid-stream is cli_error naming its exit code and its last stderr line."""
    cli = fake_cli(
        "crash_mid_stream",
        code=3,
        stderr_text="Error: boom\n    at foo (file:///fake/cli.js:1:1)\n",
    )
    error = await _run_error(cli)
    assert error.error_type == "cli_error"
    assert "code 3" in error.message
    assert "at foo (file:///fake/cli.js:1:1)" in error.message
    assert list(cli.work_dir.iterdir()) == []


@pytest.mark.parametrize("secret", ["sk-ant-abc123", "ccg_xyz", "Bearer tok.abc123"])
async def test_runner_crash_redacts_keys_in_stderr(
    fake_cli: Callable[..., FakeCli], secret: str
) -> None:
    """A key or bearer token on the CLI's stderr shows as [redacted] in the error message."""
    cli = fake_cli("crash_mid_stream", stderr_text=f"Error: request with {secret} failed\n")
    error = await _run_error(cli)
    assert error.error_type == "cli_error"
    assert "Error: request with [redacted] failed" in error.message
    assert secret not in error.message
    assert secret.split()[-1] not in error.message


async def test_runner_crash_redacts_a_key_cut_by_the_stderr_window(
    fake_cli: Callable[..., FakeCli],
) -> None:
    """A key whose start falls just before the kept stderr window is not leaked either."""
    body = "Z" * 90
    key = "sk-ant-api03-" + body
    size = STDERR_KEEP_BYTES - (len(key) - 20)  # the window starts 20 bytes into the key
    frame = "    at minified (file:///cli.js:1:1) "
    after = "\n" + "\n".join(frame + "q" * (size // 4 - len(frame) - 1) for _ in range(4))
    after += "q" * (size - len(after) - 1) + "\n"  # four long lines: the key's line is kept
    cli = fake_cli("crash_mid_stream", stderr_text=f"Error: 401 for key {key}{after}")
    error = await _run_error(cli)
    assert error.error_type == "cli_error"
    assert "at minified" in error.message  # the tail is there...
    leaked = body[-40:] in error.message
    assert not leaked, "the error message holds the key's body, minus its sk-ant- prefix"


async def test_runner_garbage_lines_are_skipped(fake_cli: Callable[..., FakeCli]) -> None:
    """Non-JSON, truncated and unknown stdout lines are skipped and the result still arrives."""
    cli = fake_cli("garbage", text="still here")
    result = await collect(cli.runner, RunRequest.from_text("hi", "sonnet"))
    assert result.text == "still here"
    assert result.session_id is not None


async def test_runner_garbage_only_ends_without_a_result(
    fake_cli: Callable[..., FakeCli],
) -> None:
    """A CLI that prints only garbage and exits 0 is cli_error 'without a result'."""
    error = await _run_error(fake_cli("garbage_only"))
    assert error.error_type == "cli_error"
    assert "without a result" in error.message


async def test_runner_exit_code_names_the_code_and_stderr(
    fake_cli: Callable[..., FakeCli],
) -> None:
    """A CLI exiting 2 with no output is cli_error naming code 2 and its stderr."""
    error = await _run_error(fake_cli("exit_code", code=2, stderr_text="boom\n"))
    assert error.error_type == "cli_error"
    assert "code 2" in error.message
    assert "boom" in error.message


async def test_runner_stderr_flood_does_not_deadlock(fake_cli: Callable[..., FakeCli]) -> None:
    """5 MB on stderr before the reply neither blocks the CLI nor loses the result."""
    cli = fake_cli("stderr_flood", size=5_000_000, text="after the flood")
    async with asyncio.timeout(15):
        result = await collect(cli.runner, RunRequest.from_text("hi", "sonnet", timeout_secs=10))
    assert result.text == "after the flood"


async def test_runner_idle_timeout_fires_on_silence(fake_cli: Callable[..., FakeCli]) -> None:
    """A CLI that prints nothing for idle_timeout_secs fails as an idle timeout."""
    started = time.monotonic()
    error = await _run_error(fake_cli("hang_silent"), timeout_secs=60, idle_timeout_secs=1)
    elapsed = time.monotonic() - started
    assert error.error_type == "timeout"
    assert "idle" in error.message
    assert 0.9 <= elapsed < 3


async def test_runner_wall_clock_timeout_fires_on_a_hang(
    fake_cli: Callable[..., FakeCli],
) -> None:
    """A CLI that starts a reply and never finishes fails as a wall-clock timeout."""
    started = time.monotonic()
    error = await _run_error(fake_cli("hang"), timeout_secs=1, idle_timeout_secs=0)
    elapsed = time.monotonic() - started
    assert error.error_type == "timeout"
    assert "wall-clock" in error.message
    assert 0.9 <= elapsed < 3


async def test_runner_timeout_kills_the_cli_and_its_child(
    fake_cli: Callable[..., FakeCli],
) -> None:
    """After a timeout neither the CLI nor a subprocess it spawned is left running."""
    cli = fake_cli("hang", spawn_child=True)
    error = await _run_error(cli, timeout_secs=1)
    assert error.error_type == "timeout"
    [run] = cli.runs()
    assert run["pgid"] == run["pid"]  # the CLI leads its own process group
    pids = (run["pid"], run["child_pid"])
    assert await _eventually(lambda: all(_dead(pid) for pid in pids), 3.0), pids
    assert list(cli.work_dir.iterdir()) == []


async def test_runner_cancel_stops_the_group_and_removes_the_run_dir(
    fake_cli: Callable[..., FakeCli],
) -> None:
    """Cancelling the task running collect() mid-stream kills the CLI group and its dir."""
    cli = fake_cli("slow")  # 20 deltas 0.25 s apart: about 5 s of streaming
    task = asyncio.create_task(collect(cli.runner, RunRequest.from_text("hi", "sonnet")))
    assert await _eventually(lambda: bool(cli.runs()), 3.0)
    await asyncio.sleep(0.6)  # a few deltas into the stream
    assert not task.done()
    [run] = cli.runs()
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _eventually(lambda: _group_gone(run["pgid"]), 2.0)
    assert time.monotonic() - cancelled_at < 2.0
    assert _dead(run["pid"])
    assert list(cli.work_dir.iterdir()) == []


async def test_runner_wall_clock_timeout_bounds_a_cli_that_never_reads_stdin(
    tmp_path: Path,
) -> None:
    """timeout_secs also bounds writing the prompt to a CLI that hangs before reading stdin."""
    executable = tmp_path / "claude"
    executable.write_text("#!/bin/sh\nexec sleep 1000\n", encoding="utf-8")
    executable.chmod(0o755)
    (tmp_path / "work").mkdir()
    runner = ClaudeCliRunner(
        CliOptions(
            executable=str(executable),
            base_env={"PATH": os.environ["PATH"]},
            kill_grace_secs=0.5,
            work_dir=str(tmp_path / "work"),
        )
    )
    request = RunRequest.from_text("x" * 1_000_000, "sonnet", timeout_secs=1)  # > pipe buffer
    try:
        async with asyncio.timeout(4):
            with pytest.raises(RunError) as caught:
                await collect(runner, request)
    except TimeoutError:
        pytest.fail("timeout_secs=1 did not bound the prompt write to stdin (still stuck at 4 s)")
    finally:
        await runner.aclose()
    assert caught.value.error_type == "timeout"
    assert "wall-clock" in caught.value.message
