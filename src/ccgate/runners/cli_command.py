"""The argv and environment of one locked-down ``claude -p`` run."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ccgate.runners.base import RunRequest
from ccgate.runners.sandbox import NO_SANDBOX, Sandbox
from ccgate.turns import ContentBlock

EMPTY_MCP_CONFIG = json.dumps({"mcpServers": {}})

# Switches that keep the CLI from phoning home or updating itself under a running gateway.
QUIET_ENV: Mapping[str, str] = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_BUG_COMMAND": "1",
    "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
}

# Switches that keep hostile text from making the CLI read files on its own: without them it
# expands "@path" (a file, or a directory's listing) in the prompt before calling the model,
# whatever the tool list says. Either one stops it on the pinned CLI; both are set.
LOCKDOWN_ENV: Mapping[str, str] = {
    "CLAUDE_CODE_DISABLE_FILE_MENTIONS": "1",
    "CLAUDE_CODE_DISABLE_ATTACHMENTS": "1",
}


@dataclass(frozen=True)
class CliOptions:
    """What every run of one gateway shares: the executable, lockdown and upstream limits."""

    executable: str
    base_env: Mapping[str, str]
    allow_tools: bool = False
    upstream_retries: int = 1
    upstream_timeout_secs: float = 300.0
    kill_grace_secs: float = 2.0
    work_dir: str | None = None
    sandbox: Sandbox = NO_SANDBOX


@dataclass(frozen=True)
class PromptFiles:
    """Where a run's system prompts were written (``None``: that prompt is not set)."""

    system: str | None = None
    append: str | None = None


NO_PROMPT_FILES = PromptFiles()


def build_argv(
    options: CliOptions,
    request: RunRequest,
    *,
    prompt_files: PromptFiles = NO_PROMPT_FILES,
    resume: str | None = None,
) -> list[str]:
    """Return the argv list for ``request``; no prompt text goes here, system prompts included.

    The prompt goes on stdin; the system prompts are read from ``prompt_files``, which must be
    given for each one the request sets (ValueError otherwise). ``resume`` is the id of a
    transcript written for this run alone (its earlier turns).
    """
    if (request.system_prompt is not None and prompt_files.system is None) or (
        request.append_system_prompt is not None and prompt_files.append is None
    ):
        raise ValueError("system prompts go into files, never into argv")
    argv = [
        options.executable,
        "-p",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        "--model",
        request.model,
    ]
    if request.stream:
        argv.append("--include-partial-messages")
    # Files, not text: argv is readable by every local user and one argument holds ~128 KiB.
    if prompt_files.system is not None:
        argv += ["--system-prompt-file", prompt_files.system]
    if prompt_files.append is not None:
        argv += ["--append-system-prompt-file", prompt_files.append]
    if not options.allow_tools:
        # An empty tool list is the only switch that removes tools from the upstream request;
        # permission modes and disallow lists still let read-only Bash run in -p mode.
        argv += ["--tools", ""]
    argv += [
        "--strict-mcp-config",
        "--mcp-config",
        EMPTY_MCP_CONFIG,
        "--setting-sources",
        "",
        "--disable-slash-commands",
        "--no-session-persistence",
    ]
    if resume is not None:
        argv += ["--resume", resume]
    return argv


def build_env(options: CliOptions, run_dir: str) -> dict[str, str]:
    """Return the scrubbed environment: the allowlist, quiet and lockdown switches (which win
    over any passed-through value), limits, private TMPDIR."""
    env = dict(options.base_env)
    env.update(QUIET_ENV)
    env.update(LOCKDOWN_ENV)
    env["CLAUDE_CODE_MAX_RETRIES"] = str(options.upstream_retries)
    env["API_TIMEOUT_MS"] = str(int(options.upstream_timeout_secs * 1000))
    env["TMPDIR"] = run_dir
    return env


def user_message(content: Sequence[ContentBlock]) -> bytes:
    """Encode the user turn as the one stream-json line the CLI reads from stdin."""
    line = {"type": "user", "message": {"role": "user", "content": content}}
    return json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n"
