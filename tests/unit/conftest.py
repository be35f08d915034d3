"""A ClaudeCliRunner wired to the fake claude CLI, for the runner's unit tests."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ccgate.runners.cli import ClaudeCliRunner
from ccgate.runners.cli_command import CliOptions
from tests.support.fake_claude_factory import make_fake_claude


@dataclass(frozen=True)
class FakeCli:
    """A runner whose executable is the fake claude, which records every invocation."""

    runner: ClaudeCliRunner
    options: CliOptions
    executable: Path
    work_dir: Path
    record: Path

    def runs(self) -> list[dict[str, Any]]:
        """The fake's records (argv, env, cwd, stdin, pid, pgid...), oldest first."""
        if not self.record.exists():
            return []
        lines = self.record.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture
async def fake_cli(tmp_path: Path) -> AsyncIterator[Callable[..., FakeCli]]:
    """Build FakeClis playing ``scenario`` with the fake's ``params``; all closed at the end."""
    built: list[FakeCli] = []

    def build(scenario: str = "text", **params: Any) -> FakeCli:
        record = tmp_path / "record.jsonl"
        executable = make_fake_claude(tmp_path / "bin", scenario, record=str(record), **params)
        work_dir = tmp_path / "work"
        work_dir.mkdir(exist_ok=True)
        options = CliOptions(
            executable=str(executable),
            base_env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
            kill_grace_secs=0.5,
            work_dir=str(work_dir),
        )
        built.append(FakeCli(ClaudeCliRunner(options), options, executable, work_dir, record))
        return built[-1]

    yield build
    for cli in built:
        # Finished runs reap their CLI and run dir in the background; wait for that.
        await cli.runner.aclose()
