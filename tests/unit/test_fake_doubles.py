"""The test doubles behave like what they stand in for: the Anthropic API and the claude CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import service_missing
from tests.support.fake_anthropic import Error, FakeAnthropic, Text, cli_env
from tests.support.fake_claude_factory import make_fake_claude
from tests.support.real_claude import find_real_claude

PRINT_ARGS = ["-p", "--output-format", "stream-json", "--verbose", "--tools", ""]
RESULT_KEYS = {
    "type", "subtype", "is_error", "api_error_status", "terminal_reason", "result",
    "session_id", "duration_ms", "duration_api_ms", "num_turns", "total_cost_usd", "usage",
    "modelUsage", "permission_denials", "stop_reason", "uuid",
}  # fmt: skip
RUN_TIMEOUT = 60


@pytest.fixture
def real_claude() -> Path:
    """The real pinned CLI; skipped where absent, a failure when CI demands it."""
    path = find_real_claude()
    if path is None:
        service_missing(
            "real claude CLI not found: set CCGATE_TEST_CLAUDE, install it into "
            ".tools/node_modules or put it on PATH"
        )
    assert path is not None
    return path


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    """A running FakeAnthropic, stopped after the test."""
    with FakeAnthropic() as fake:
        yield fake


def _lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _result(stdout: str) -> dict[str, Any] | None:
    results = [line for line in _lines(stdout) if line.get("type") == "result"]
    return results[-1] if results else None


def _run(
    argv: list[str], prompt: str, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, input=prompt, capture_output=True, text=True, cwd=cwd, env=env, timeout=RUN_TIMEOUT
    )


def _run_real_cli(
    claude: Path, fake: FakeAnthropic, tmp_path: Path, prompt: str
) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "home"
    home.mkdir()
    return _run([str(claude), *PRINT_ARGS], prompt, tmp_path, cli_env(fake, home))


def _wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)
    return check()


def _alive(pid: int) -> bool:
    # A killed child may linger as a zombie until reaped; that counts as dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.real_cli
def test_real_cli_relays_fake_anthropic_text(
    real_claude: Path, fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    """The real CLI streams a FakeAnthropic Text reply into its result and sends no tools."""
    fake_api.reply(Text("Hello from the fake upstream"))

    done = _run_real_cli(real_claude, fake_api, tmp_path, "say hello")

    assert done.returncode == 0, done.stderr
    result = _result(done.stdout)
    assert result is not None
    assert result["result"] == "Hello from the fake upstream"
    requests = fake_api.message_requests()
    assert requests
    assert requests[0].body["tools"] == []
    assert requests[0].body["stream"] is True


@pytest.mark.real_cli
def test_real_cli_reports_fake_anthropic_401(
    real_claude: Path, fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    """The real CLI turns a FakeAnthropic 401 into exit 1 and an is_error result."""
    fake_api.default = Error(401, "authentication_error", "invalid x-api-key")

    done = _run_real_cli(real_claude, fake_api, tmp_path, "say hello")

    assert done.returncode == 1
    result = _result(done.stdout)
    assert result is not None
    assert result["is_error"] is True
    assert result["api_error_status"] == 401
    assert result["terminal_reason"] == "api_error"


def test_fake_claude_text_prints_a_valid_result(tmp_path: Path) -> None:
    """The text scenario streams its deltas and ends with a result shaped like the real one."""
    claude = make_fake_claude(tmp_path / "bin", "text", text="pong from fake", chunks=3)

    argv = [str(claude), *PRINT_ARGS, "--include-partial-messages"]
    done = _run(argv, "ping", tmp_path, env={})

    assert done.returncode == 0, done.stderr
    lines = _lines(done.stdout)
    assert (lines[0]["type"], lines[0]["subtype"]) == ("system", "init")
    deltas = [
        line["event"]["delta"]["text"]
        for line in lines
        if line["type"] == "stream_event" and line["event"]["type"] == "content_block_delta"
    ]
    assert deltas == ["pong ", "from ", "fake"]
    result = lines[-1]
    assert result.keys() >= RESULT_KEYS
    assert (result["type"], result["subtype"], result["is_error"]) == ("result", "success", False)
    assert result["result"] == "pong from fake"


def test_fake_claude_crash_mid_stream_has_no_result(tmp_path: Path) -> None:
    """crash_mid_stream exits non-zero with stderr text and never prints a result line."""
    claude = make_fake_claude(tmp_path / "bin", "crash_mid_stream", stderr_text="Error: boom\n")

    argv = [str(claude), *PRINT_ARGS, "--include-partial-messages"]
    done = _run(argv, "ping", tmp_path, env={})

    assert done.returncode == 3
    assert "Error: boom" in done.stderr
    assert _result(done.stdout) is None
    assert any(line["type"] == "stream_event" for line in _lines(done.stdout))


def test_killing_fake_claude_process_group_kills_its_child(tmp_path: Path) -> None:
    """Killing the hang scenario's process group also kills the child it spawned."""
    record = tmp_path / "record.jsonl"
    claude = make_fake_claude(tmp_path / "bin", "hang", spawn_child=True, record=str(record))
    # The prompt goes before the options: like commander.js in the real CLI, the fake's
    # variadic --tools would swallow a trailing positional argument.
    proc = subprocess.Popen(
        [str(claude), "hang here", *PRINT_ARGS],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert _wait_until(lambda: record.exists() and bool(record.read_text()), timeout=10)
        entry = json.loads(record.read_text().splitlines()[0])
        assert entry["pgid"] == proc.pid
        assert _alive(entry["child_pid"])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=RUN_TIMEOUT)

    assert _wait_until(lambda: not _alive(entry["child_pid"]), timeout=5)
