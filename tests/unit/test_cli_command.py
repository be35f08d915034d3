"""The argv and environment of a CLI run: lockdown flags, prompt never in argv."""

from __future__ import annotations

import json

from ccgate.runners.base import RunRequest
from ccgate.runners.cli_command import CliOptions, build_argv, build_env, user_message


def _options(**kwargs: object) -> CliOptions:
    return CliOptions(executable="/bin/claude", base_env={"PATH": "/usr/bin", "HOME": "/h"},
                      **kwargs)  # type: ignore[arg-type]


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
    request = RunRequest.from_text("-secret prompt text", "sonnet", system_prompt="be terse")
    argv = build_argv(_options(), request)
    assert not any("secret prompt" in part for part in argv)
    assert argv[argv.index("--system-prompt") + 1] == "be terse"
    message = json.loads(user_message(request.content))
    assert message["message"]["content"] == [{"type": "text", "text": "-secret prompt text"}]


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
