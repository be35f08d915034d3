"""The argv and environment of a CLI run: lockdown flags and switches, no prompt in argv."""

from __future__ import annotations

import json
from typing import TypedDict, Unpack

import pytest

from ccgate.runners.base import RunRequest
from ccgate.runners.cli_command import (
    CliOptions,
    PromptFiles,
    build_argv,
    build_env,
    user_message,
)
from ccgate.runners.sandbox import Sandbox


class _OptionOverrides(TypedDict, total=False):
    """The CliOptions fields a test may set; the rest keep their defaults."""

    allow_tools: bool
    upstream_retries: int
    upstream_timeout_secs: float
    kill_grace_secs: float
    work_dir: str | None
    sandbox: Sandbox


def _options(**kwargs: Unpack[_OptionOverrides]) -> CliOptions:
    return CliOptions(
        executable="/bin/claude", base_env={"PATH": "/usr/bin", "HOME": "/h"}, **kwargs
    )


def test_argv_is_locked_down() -> None:
    """Every run gets an empty tool list, no MCP, no settings, no slash commands."""
    argv = build_argv(_options(), RunRequest.from_text("hi", "sonnet"))
    assert argv[argv.index("--tools") + 1] == ""
    assert "--strict-mcp-config" in argv
    assert json.loads(argv[argv.index("--mcp-config") + 1]) == {"mcpServers": {}}
    assert argv[argv.index("--setting-sources") + 1] == ""
    assert "--disable-slash-commands" in argv
    assert "--no-session-persistence" in argv
    assert "--dangerously-skip-permissions" not in argv


def test_argv_never_holds_the_prompt() -> None:
    """The prompt goes to stdin as a stream-json user message, never into argv."""
    request = RunRequest.from_text("-secret prompt text", "sonnet")
    argv = build_argv(_options(), request)
    assert not any("secret prompt" in part for part in argv)
    message = json.loads(user_message(request.content))
    assert message["message"]["content"] == [{"type": "text", "text": "-secret prompt text"}]


def test_argv_never_holds_the_system_prompts() -> None:
    """System prompts reach the CLI as files named in argv, never as argv text."""
    request = RunRequest.from_text(
        "hi", "sonnet", system_prompt="SECRET-SYSTEM", append_system_prompt="SECRET-APPENDED"
    )
    files = PromptFiles(system="/run/1/system-prompt.txt", append="/run/1/append.txt")

    argv = build_argv(_options(), request, prompt_files=files)

    assert not any("SECRET" in part for part in argv)
    assert "--system-prompt" not in argv and "--append-system-prompt" not in argv
    assert argv[argv.index("--system-prompt-file") + 1] == "/run/1/system-prompt.txt"
    assert argv[argv.index("--append-system-prompt-file") + 1] == "/run/1/append.txt"


def test_argv_refuses_a_system_prompt_without_its_file() -> None:
    """A system prompt with no file to carry it is an error, never a fallback to argv."""
    request = RunRequest.from_text("hi", "sonnet", system_prompt="SECRET-SYSTEM")

    with pytest.raises(ValueError, match="never into argv"):
        build_argv(_options(), request)


def test_argv_tools_opt_in_drops_only_the_empty_tool_list() -> None:
    """CCGATE_ALLOW_TOOLS removes ``--tools ""`` but never skips permissions."""
    argv = build_argv(_options(allow_tools=True), RunRequest.from_text("hi", "sonnet"))
    assert "--tools" not in argv
    assert "--dangerously-skip-permissions" not in argv
    assert "--strict-mcp-config" in argv


def test_env_is_scrubbed_quiet_and_bounded() -> None:
    """The child env is the allowlist plus telemetry switches, retries and a private TMPDIR."""
    env = build_env(_options(upstream_retries=0, upstream_timeout_secs=30), "/tmp/run-1")
    assert env["PATH"] == "/usr/bin"
    assert env["DISABLE_TELEMETRY"] == "1"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["DISABLE_AUTOUPDATER"] == "1"
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "0"
    assert env["API_TIMEOUT_MS"] == "30000"
    assert env["TMPDIR"] == "/tmp/run-1"


def test_env_turns_file_mentions_off_whatever_passes_through() -> None:
    """The switches that stop the CLI expanding ``@path`` are set and win over base values."""
    options = CliOptions(
        executable="/bin/claude",
        base_env={"CLAUDE_CODE_DISABLE_FILE_MENTIONS": "0", "CLAUDE_CODE_DISABLE_ATTACHMENTS": ""},
    )

    env = build_env(options, "/tmp/run-1")

    assert env["CLAUDE_CODE_DISABLE_FILE_MENTIONS"] == "1"
    assert env["CLAUDE_CODE_DISABLE_ATTACHMENTS"] == "1"
