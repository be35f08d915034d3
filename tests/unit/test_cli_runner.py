"""The claude CLI runner against the fake CLI: streaming, stdin, argv, env, run dir, probing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ccgate.runners.base import (
    RunError,
    RunEvent,
    RunRequest,
    RunResult,
    RunStarted,
    TextDelta,
    collect,
)
from ccgate.runners.cli import ClaudeCliRunner, probe_version
from ccgate.runners.cli_command import LOCKDOWN_ENV, QUIET_ENV, CliOptions

if TYPE_CHECKING:
    from tests.unit.conftest import FakeCli

# Added inside the fake, not by the runner: dash exports PWD when the wrapper starts, and
# Python's PEP 538 locale coercion sets LC_CTYPE when the environment names no locale.
WRAPPER_ADDED = {"PWD", "LC_CTYPE"}
# About 1 MB of multi-line, non-ASCII text whose first line looks like a CLI option.
BIG_PROMPT = "--help\n" + "".join(f"ligne {i}: é✓ {'x' * 980}\n" for i in range(1000))


async def _all_events(cli: FakeCli, request: RunRequest) -> list[RunEvent]:
    async with contextlib.aclosing(cli.runner.run(request)) as events:
        return [event async for event in events]


async def test_runner_text_deltas_concatenate_to_the_result(
    fake_cli: Callable[..., FakeCli],
) -> None:
    """Text deltas arrive in order, join to the result text, and usage/cost/session are set."""
    cli = fake_cli("text", text="alpha beta gamma delta")
    events = await _all_events(cli, RunRequest.from_text("hi", "sonnet"))
    started, *middle, result = events
    assert isinstance(started, RunStarted)
    assert isinstance(result, RunResult)
    deltas = [event.text for event in middle if isinstance(event, TextDelta)]
    assert deltas == ["alpha", " beta", " gamma", " delta"]
    assert "".join(deltas) == result.text == "alpha beta gamma delta"
    assert result.usage["input_tokens"] > 0
    assert result.usage["output_tokens"] > 0
    assert result.cost_usd is not None
    assert result.cost_usd > 0
    assert result.session_id is not None
    assert result.session_id == started.session_id


@pytest.mark.parametrize("prompt", ["--help -p", BIG_PROMPT], ids=["dash", "1MB"])
async def test_runner_prompt_goes_on_stdin_not_argv(
    fake_cli: Callable[..., FakeCli], prompt: str
) -> None:
    """The prompt reaches the CLI intact as one stream-json user line on stdin, never argv."""
    cli = fake_cli("echo", chunks=4)
    result = await collect(cli.runner, RunRequest.from_text(prompt, "sonnet"))
    assert result.text == prompt
    [run] = cli.runs()
    assert run["stdin"].count("\n") == 1
    assert json.loads(run["stdin"]) == {
        "type": "user",
        "message": {"role": "user", "content": [{"type": "text", "text": prompt}]},
    }
    assert not any(prompt in arg or "--help" in arg for arg in run["argv"])


async def test_runner_argv_is_locked_down(fake_cli: Callable[..., FakeCli]) -> None:
    """The CLI gets no tools, no MCP, no settings, no persistence and never skips permissions."""
    cli = fake_cli("text")
    await collect(cli.runner, RunRequest.from_text("hi", "sonnet"))
    [run] = cli.runs()
    argv = run["argv"]
    assert argv[argv.index("--tools") + 1] == ""
    assert "--strict-mcp-config" in argv
    assert argv[argv.index("--setting-sources") + 1] == ""
    assert "--no-session-persistence" in argv
    assert "--dangerously-skip-permissions" not in argv
    assert "--allow-dangerously-skip-permissions" not in argv


async def test_runner_child_env_is_only_the_allowlist(
    fake_cli: Callable[..., FakeCli], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child sees base_env, the quiet and lockdown switches, retries, API timeout and
    TMPDIR only."""
    monkeypatch.setenv("CCGATE_TEST_LEAK_CANARY", "leaked")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-must-not-leak")
    cli = fake_cli("text")
    await collect(cli.runner, RunRequest.from_text("hi", "sonnet"))
    [run] = cli.runs()
    env = {k: v for k, v in run["env"].items() if k not in WRAPPER_ADDED}
    assert env == {
        **cli.options.base_env,
        **QUIET_ENV,
        **LOCKDOWN_ENV,
        "CLAUDE_CODE_MAX_RETRIES": "1",
        "API_TIMEOUT_MS": "300000",
        "TMPDIR": run["cwd"],
    }
    assert "CCGATE_TEST_LEAK_CANARY" not in run["env"]
    assert "ANTHROPIC_API_KEY" not in run["env"]


async def test_runner_child_runs_in_a_fresh_dir_removed_after(
    fake_cli: Callable[..., FakeCli],
) -> None:
    """Each run's cwd and TMPDIR are a new dir under work_dir, deleted once the run is over."""
    cli = fake_cli("text")
    await collect(cli.runner, RunRequest.from_text("hi", "sonnet"))
    for _ in range(60):  # reaped in the background after the result, without aclose()
        if not list(cli.work_dir.iterdir()):
            break
        await asyncio.sleep(0.05)
    assert list(cli.work_dir.iterdir()) == []
    await collect(cli.runner, RunRequest.from_text("hi", "sonnet"))
    await cli.runner.aclose()  # waits for the background reaping
    assert list(cli.work_dir.iterdir()) == []
    first, second = cli.runs()
    assert first["cwd"] != second["cwd"]
    for run in (first, second):
        assert Path(run["cwd"]).parent == cli.work_dir
        assert Path(run["cwd"]).name.startswith("ccgate-run-")
        assert run["env"]["TMPDIR"] == run["cwd"]


async def test_runner_big_line_result_arrives_whole(fake_cli: Callable[..., FakeCli]) -> None:
    """A 10 MB result line (and 10 MB assistant line) is read whole, not truncated."""
    cli = fake_cli("big_line", size=10_000_000)
    events = await _all_events(cli, RunRequest.from_text("hi", "sonnet"))
    result = events[-1]
    assert isinstance(result, RunResult)
    assert len(result.text) == 10_000_000
    assert result.text.startswith("0123456789abcdefghijklmnopqrstuvwxyz 0123")
    deltas = "".join(event.text for event in events if isinstance(event, TextDelta))
    assert deltas == result.text


async def test_runner_missing_executable_is_cli_unavailable(tmp_path: Path) -> None:
    """A CLI path that does not exist fails as cli_unavailable with an install hint, and the
    message (which key holders see) does not reveal the path."""
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    runner = ClaudeCliRunner(
        CliOptions(
            executable=str(tmp_path / "missing" / "claude"),
            base_env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
            kill_grace_secs=0.5,
            work_dir=str(work_dir),
        )
    )
    with pytest.raises(RunError) as caught:
        await collect(runner, RunRequest.from_text("hi", "sonnet"))
    await runner.aclose()
    assert caught.value.error_type == "cli_unavailable"
    assert str(tmp_path) not in caught.value.message
    assert "npm install -g @anthropic-ai/claude-code" in caught.value.message
    assert list(work_dir.iterdir()) == []


async def test_runner_probe_version_reads_the_cli_version(
    fake_cli: Callable[..., FakeCli],
) -> None:
    """probe_version returns the first line of ``claude --version``."""
    cli = fake_cli("text")
    assert await probe_version(str(cli.executable)) == "2.1.330 (Claude Code)"


async def test_runner_probe_version_of_a_missing_cli_is_none(tmp_path: Path) -> None:
    """probe_version returns None when the executable does not exist."""
    assert await probe_version(str(tmp_path / "missing" / "claude")) is None


async def test_runner_system_prompts_reach_the_cli_as_private_files(
    fake_cli: Callable[..., FakeCli],
) -> None:
    """Both system prompts arrive as 0600 files in the run's own directory, never in argv."""
    cli = fake_cli("text")
    request = RunRequest.from_text(
        "hi", "sonnet", system_prompt="SECRET-SYSTEM\0 é", append_system_prompt="SECRET-APPENDED"
    )

    await collect(cli.runner, request)

    [run] = cli.runs()
    assert not any("SECRET" in part for part in run["argv"])
    files = run["prompt_files"]
    assert files["system-prompt-file"]["text"] == "SECRET-SYSTEM\0 é"
    assert files["append-system-prompt-file"]["text"] == "SECRET-APPENDED"
    for written in files.values():
        assert written["mode"] == 0o600
        assert os.path.dirname(written["path"]) == run["cwd"]


async def test_runner_start_failure_of_any_kind_leaves_no_directory(tmp_path: Path) -> None:
    """A CLI that cannot start for a reason other than OSError (a NUL in its path) fails as
    cli_unavailable and leaves no run directory behind."""
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    runner = ClaudeCliRunner(
        CliOptions(
            executable="/usr/bin/claude\0",
            base_env={"PATH": os.environ["PATH"]},
            work_dir=str(work_dir),
        )
    )

    with pytest.raises(RunError) as caught:
        await collect(runner, RunRequest.from_text("hi", "sonnet", system_prompt="terse"))
    await runner.aclose()

    assert caught.value.error_type == "cli_unavailable"
    assert list(work_dir.iterdir()) == []


async def test_runner_plan_window_warning_completes_and_rejection_closes(
    fake_cli: Callable[..., FakeCli],
) -> None:
    """Through the CLI process, allowed_warning ends in a result carrying the window and a
    warning, and a rejected window raises WindowClosed with the reported reset."""
    from ccgate.runners.plan_windows import WindowClosed

    warned = fake_cli("plan_window", status="allowed_warning", utilization=0.9)
    *_, result = await _all_events(warned, RunRequest.from_text("hi", "sonnet"))
    assert isinstance(result, RunResult) and result.warning is not None
    assert result.plan_windows[0].name == "five_hour"
    refused = fake_cli("plan_window", status="rejected", resets_at=4102444800, window="seven_day")
    with pytest.raises(WindowClosed) as caught:
        await _all_events(refused, RunRequest.from_text("hi", "sonnet"))
    assert caught.value.resets_at is not None
    assert int(caught.value.resets_at.timestamp()) == 4102444800
