"""Earlier turns of a conversation reach the upstream through the real claude CLI, in order."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ccgate.runners.base import RunRequest, collect
from ccgate.runners.cli import ClaudeCliRunner
from ccgate.runners.cli_command import CliOptions
from tests.e2e.conftest import system_texts
from tests.support.fake_anthropic import FakeAnthropic, Text, cli_env

pytestmark = pytest.mark.real_cli

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
IMAGE = {
    "type": "image",
    "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(PNG).decode()},
}
HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": [{"type": "text", "text": "first question"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "first answer"}]},
    {"role": "user", "content": [{"type": "text", "text": "what is in this image?"}, IMAGE]},
    {"role": "assistant", "content": [{"type": "text", "text": "a red pixel"}]},
]


@pytest.fixture
async def runner(
    fake: FakeAnthropic, home: Path, work_dir: Path, claude_path: Path
) -> AsyncIterator[ClaudeCliRunner]:
    """The cold CLI runner on the real CLI against the fake API, config dir under `home`."""
    env = {**cli_env(fake, home), "CLAUDE_CONFIG_DIR": str(home / ".claude")}
    cli = ClaudeCliRunner(
        CliOptions(
            executable=str(claude_path), base_env=env, upstream_retries=0, work_dir=str(work_dir)
        )
    )
    yield cli
    await cli.aclose()


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The message's blocks without the cache markers the CLI adds."""
    content = message["content"]
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    return [{k: v for k, v in b.items() if k != "cache_control"} for b in blocks]


def _entries(directory: Path) -> list[Path]:
    return list(directory.iterdir())


async def test_real_cli_history_reaches_upstream_in_order(
    fake: FakeAnthropic, runner: ClaudeCliRunner
) -> None:
    """Every earlier turn, image included, arrives in order before the new user turn."""
    fake.reply(Text("third answer"))
    request = RunRequest.from_text(
        "third question", "claude-sonnet-4-5", history=HISTORY, system_prompt="You are terse. ZX-81"
    )

    result = await collect(runner, request)

    assert result.text == "third answer"
    [upstream] = fake.message_requests()
    messages = upstream.body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert [_blocks(m) for m in messages[:4]] == [turn["content"] for turn in HISTORY]
    # The CLI puts its own reminders before the new turn's text, in the same user message.
    assert _blocks(messages[4])[-1] == {"type": "text", "text": "third question"}
    assert "You are terse. ZX-81" in system_texts(upstream.body)


async def test_real_cli_history_leaves_nothing_under_projects(
    fake: FakeAnthropic, runner: ClaudeCliRunner, home: Path, work_dir: Path
) -> None:
    """After a run with history, the config dir's projects/ and the work dir are empty."""
    fake.reply(Text("done"))
    request = RunRequest.from_text("next", "claude-sonnet-4-5", history=HISTORY[:2])

    result = await collect(runner, request)
    await runner.aclose()  # the CLI exits and is cleaned up off the caller's path

    assert result.text == "done"
    assert len(fake.message_requests()) == 1
    assert _entries(home / ".claude" / "projects") == []
    assert _entries(work_dir) == []
