"""A fake `claude` executable that imitates Claude Code 2.1.330 in print mode.

It speaks the same stream-json protocol as the real CLI (system/init, optional
stream_event lines, assistant, result) and can misbehave on demand: crash,
hang, flood stderr, print garbage or huge lines. Standard library only and
lazy imports, because every test that runs it pays its start-up time.

The scenario comes from, in order of precedence:
  1. a first prompt line such as ``#fake: crash`` or
     ``#fake: upstream_error status=429`` or ``#fake: {"scenario": "slow"}``;
  2. the JSON file given by ``--fake-config PATH`` (the factory's wrapper
     passes it, so callers never add arguments);
  3. ``fake-claude.json`` next to ``sys.argv[0]``.

With stream-json input it serves one turn per user message and answers ``/clear``
(unless ``--disable-slash-commands``) with a conversation_reset and a new session, as the
real CLI does; interrupt control requests are ignored.

With ``--resume <id>`` it reads the session transcript where the real CLI does
(``$CLAUDE_CONFIG_DIR``, else ``$HOME/.claude``, then ``projects/<sanitized cwd>/<id>.jsonl``),
follows its ``parentUuid`` chain, records those turns as the run's ``history`` and answers
scenario ``echo_history`` with them; a missing transcript fails as the real CLI's does.

It never reads configuration from the environment: the gateway scrubs the
environment it hands to the CLI, and the fake has to work under that.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from typing import Any

VERSION = "2.1.330"
CONFIG_NAME = "fake-claude.json"
CONFIG_FLAG = "--fake-config"
ARGV0_FLAG = "--fake-argv0"
DIRECTIVE = "#fake:"
DEFAULT_MODEL = "claude-sonnet-4-5"
DEFAULT_TOOLS = ["Task", "Bash", "Edit", "Glob", "Grep", "Read", "WebFetch", "WebSearch", "Write"]
USAGE = "Usage: claude [options] [command] [prompt]\n\n(fake Claude Code for tests)"
SIGTERM_EXIT = 143  # the real CLI exits 128+15 on SIGTERM instead of dying by the signal
GARBAGE_LINES = [
    "this line is not JSON at all",
    '{"type": "assistant", "message": ',
    '{"type":"mystery_event","payload":{"n":1}}',
    "[1, 2, 3]",
    '"just a string"',
    "",
    "\x1b[31mANSI noise\x1b[0m",
    '{"no_type_key": true}',
]
SCENARIO_ALIASES = {"crash": "crash_mid_stream", "error": "upstream_error"}

FLAG, ONE, OPTIONAL, VARIADIC = "flag", "one", "optional", "variadic"
# The real CLI's options (visible and the hidden ones a gateway may use) with
# commander.js arity, so a misspelt or invented flag fails here as it would there.
_OPTION_TABLE: dict[str, str] = {
    "--add-dir": VARIADIC,
    "--agent": ONE,
    "--agents": ONE,
    "--allow-dangerously-skip-permissions": FLAG,
    "--allowedTools|--allowed-tools": VARIADIC,
    "--append-system-prompt": ONE,
    "--append-system-prompt-file": ONE,
    "--autocompact": ONE,
    "--ax-screen-reader": FLAG,
    "--bg|--background": FLAG,
    "--bare": FLAG,
    "--betas": VARIADIC,
    "--brief": FLAG,
    "--chrome": FLAG,
    "--cloud": OPTIONAL,
    "-c|--continue": FLAG,
    "--dangerously-skip-permissions": FLAG,
    "-d|--debug": OPTIONAL,
    "--debug-file": ONE,
    "--desktop": FLAG,
    "--disable-slash-commands": FLAG,
    "--disallowedTools|--disallowed-tools": VARIADIC,
    "--effort": ONE,
    "--environment": ONE,
    "--exclude-dynamic-system-prompt-sections": FLAG,
    "--fallback-model": ONE,
    "--file": VARIADIC,
    "--fork-session": FLAG,
    "--forward-subagent-text": FLAG,
    "--from-pr": OPTIONAL,
    "-h|--help": FLAG,
    "--ide": FLAG,
    "--include-hook-events": FLAG,
    "--include-partial-messages": FLAG,
    "--input-format": ONE,
    "--json-schema": ONE,
    "--max-budget-usd": ONE,
    "--max-thinking-tokens": ONE,
    "--max-turns": ONE,
    "--mcp-config": VARIADIC,
    "--mcp-debug": FLAG,
    "--model": ONE,
    "-n|--name": ONE,
    "--no-chrome": FLAG,
    "--no-session-persistence": FLAG,
    "--output-format": ONE,
    "--permission-mode": ONE,
    "--permission-prompt-tool": ONE,
    "--permission-prompts": ONE,
    "--plugin-dir": ONE,
    "--plugin-url": ONE,
    "-p|--print": FLAG,
    "--prompt-suggestions": OPTIONAL,
    "--remote-control": OPTIONAL,
    "--remote-control-session-name-prefix": ONE,
    "--replay-user-messages": FLAG,
    "--restricted": FLAG,
    "-r|--resume": OPTIONAL,
    "--safe-mode": FLAG,
    "--session-id": ONE,
    "--setting-sources": ONE,
    "--settings": ONE,
    "--strict-mcp-config": FLAG,
    "--system-prompt": ONE,
    "--system-prompt-file": ONE,
    "--system-prompt-snapshot": ONE,
    "--teleport": OPTIONAL,
    "--thinking": ONE,
    "--tmux": FLAG,
    "--tools": VARIADIC,
    "--verbose": FLAG,
    "-v|--version": FLAG,
    "-w|--worktree": OPTIONAL,
}
_CHOICES = {
    "output-format": ("text", "json", "stream-json"),
    "input-format": ("text", "stream-json"),
    "permission-mode": ("acceptEdits", "auto", "bypassPermissions", "manual", "dontAsk", "plan"),
}


def _build_options() -> dict[str, tuple[str, str]]:
    options: dict[str, tuple[str, str]] = {}
    for spellings, arity in _OPTION_TABLE.items():
        names = spellings.split("|")
        key = names[-1].lstrip("-")
        for name in names:
            options[name] = (key, arity)
    return options


_OPTIONS = _build_options()


class Interrupted(Exception):
    """Raised from the SIGINT handler to unwind into the interrupt result."""


class CliError(Exception):
    """A usage error: printed to stderr, exit code 1, like the real CLI."""


# -- argument handling --------------------------------------------------------


def split_fake_args(argv: list[str]) -> tuple[str, Path | None, list[str]]:
    """Strip the wrapper's leading fake-only arguments.

    Returns (argv0 as the caller used it, explicit config path or None, the
    arguments the caller passed).
    """
    argv0 = argv[0] if argv else "claude"
    config: Path | None = None
    rest = argv[1:]
    while len(rest) >= 2 and rest[0] in (CONFIG_FLAG, ARGV0_FLAG):
        if rest[0] == CONFIG_FLAG:
            config = Path(rest[1])
        else:
            argv0 = rest[1]
        rest = rest[2:]
    return argv0, config, rest


def parse_cli(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Parse arguments the way commander.js does for the real CLI.

    Returns (options keyed by long name without dashes, positional arguments).
    Raises CliError for unknown options, missing values or invalid choices.
    """
    opts: dict[str, Any] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            positional.extend(args[i:])
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, has_inline, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        spec = _OPTIONS.get(name)
        if spec is None:
            raise CliError(f"error: unknown option '{arg}'")
        key, arity = spec
        if arity == FLAG:
            opts[key] = True
            continue
        if has_inline:
            value = inline
        elif arity == OPTIONAL:
            if i < len(args) and not args[i].startswith("-"):
                value = args[i]
                i += 1
            else:
                opts[key] = True
                continue
        elif i < len(args):
            value = args[i]
            i += 1
        else:
            raise CliError(f"error: option '{name} <value>' argument missing")
        if arity == VARIADIC:
            values = opts.setdefault(key, [])
            values.append(value)
            while i < len(args) and not args[i].startswith("-"):
                values.append(args[i])
                i += 1
            continue
        choices = _CHOICES.get(key)
        if choices is not None and value not in choices:
            allowed = ", ".join(choices)
            raise CliError(
                f"error: option '--{key} <value>' argument '{value}' is invalid. "
                f"Allowed choices are {allowed}."
            )
        opts[key] = value
    return opts, positional


def validate(opts: dict[str, Any]) -> None:
    """Reject option combinations the real CLI rejects in print mode."""
    if not opts.get("print"):
        raise CliError("Error: the fake claude only supports print mode; pass -p/--print")
    output = opts.get("output-format", "text")
    if output == "stream-json" and not opts.get("verbose"):
        raise CliError("Error: When using --print, --output-format=stream-json requires --verbose")
    if opts.get("input-format") == "stream-json" and output != "stream-json":
        raise CliError("Error: --input-format=stream-json requires output-format=stream-json.")
    if opts.get("include-partial-messages") and output != "stream-json":
        raise CliError(
            "Error: --include-partial-messages requires --print and --output-format=stream-json."
        )


def load_config(explicit: Path | None, argv0: str) -> dict[str, Any]:
    """Load the scenario config: --fake-config, else fake-claude.json beside argv[0]."""
    if explicit is not None and not explicit.is_file():
        raise CliError(f"Error: fake config {explicit} does not exist")
    candidates = [explicit] if explicit is not None else []
    candidates += [Path(argv0).parent / CONFIG_NAME, Path(sys.argv[0]).parent / CONFIG_NAME]
    for path in candidates:
        if path.is_file():
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(loaded, dict):
                raise CliError(f"Error: fake config {path} must hold a JSON object")
            return loaded
    return {}


def parse_directive(prompt: str) -> tuple[dict[str, Any], str]:
    """Split a leading ``#fake:`` line off the prompt.

    Returns (directive parameters, prompt without the directive line). The
    directive is either a JSON object or ``scenario key=value ...`` where
    values are JSON when they parse as JSON and strings otherwise.
    """
    first, _, rest = prompt.partition("\n")
    if not first.strip().startswith(DIRECTIVE):
        return {}, prompt
    body = first.strip()[len(DIRECTIVE) :].strip()
    if body.startswith("{"):
        try:
            params = json.loads(body)
        except ValueError:
            params = None
        if not isinstance(params, dict):
            raise CliError("Error: a JSON #fake: directive must be an object")
        return params, rest
    words = body.split()
    params = {}
    if words and "=" not in words[0]:
        params["scenario"] = words.pop(0)
    for word in words:
        key, _, raw = word.partition("=")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params, rest


# -- output -------------------------------------------------------------------


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Keep SIGINT from cutting a stdout line in half; it is delivered right after."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def write_stdout(line: str) -> None:
    """Write one line to stdout and flush it, as the real CLI does per message."""
    data = (line + "\n").encode("utf-8", "surrogateescape")
    with _sigint_deferred():
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def write_stderr(text: str) -> None:
    """Write raw text to stderr and flush it."""
    sys.stderr.buffer.write(text.encode("utf-8", "surrogateescape"))
    sys.stderr.buffer.flush()


def _dumps(obj: Any) -> str:
    # Compact and non-ASCII kept raw: byte-for-byte the real CLI's style.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _now_iso() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _new_id() -> str:
    return str(uuid.uuid4())


def split_text(text: str, chunks: int | None) -> list[str]:
    """Split text into delta pieces: by words, or into `chunks` near-equal parts."""
    if not text:
        return []
    if chunks is None:
        # Leading whitespace stays with its word (" from"), as the real API streams it.
        pieces = re.findall(r"\s*\S+", text)
        tail = text[sum(len(p) for p in pieces) :]
        if tail and pieces:
            pieces[-1] += tail
        return pieces or [tail]
    count = max(1, min(int(chunks), len(text)))
    size, extra = divmod(len(text), count)
    out = []
    start = 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        out.append(text[start:end])
        start = end
    return out


class Session:
    """One CLI run: its options, identity, running totals and line emitters."""

    def __init__(self, opts: dict[str, Any], config: dict[str, Any]) -> None:
        """Derive the session's fixed properties from options and config."""
        self.opts = opts
        self.output_format = str(opts.get("output-format", "text"))
        self.noise: Iterator[str] | None = None
        self.partial = bool(opts.get("include-partial-messages"))
        resume = opts.get("resume")
        self.session_id = opts.get("session-id") or (resume if isinstance(resume, str) else None)
        self.session_id = self.session_id or _new_id()
        self.model = opts.get("model") or config.get("model") or DEFAULT_MODEL
        self.started = time.monotonic()
        self.total_cost = 0.0
        self.total_in = 0
        self.total_out = 0
        self.result_index = 0
        self.open_message: str | None = None
        self.history: list[dict[str, Any]] = []
        # rate_limit_info objects printed as rate_limit_event lines after the next init.
        self.rate_limits: list[dict[str, Any]] = []

    # -- single lines ---------------------------------------------------------

    def emit(self, obj: dict[str, Any]) -> None:
        """Print a protocol line when the output format is stream-json."""
        if self.output_format == "stream-json":
            write_stdout(_dumps(obj))
            if self.noise is not None:
                write_stdout(next(self.noise))

    def init(self) -> None:
        """Emit the system/init line that opens every turn."""
        tools = self._tools()
        key_source = "ANTHROPIC_API_KEY" if "ANTHROPIC_API_KEY" in os.environ else "none"
        self.emit(
            {
                "type": "system",
                "subtype": "init",
                "cwd": os.getcwd(),
                "session_id": self.session_id,
                "tools": tools,
                "mcp_servers": [],
                "model": self.model,
                "permissionMode": self.opts.get("permission-mode", "default"),
                "slash_commands": [],
                "apiKeySource": key_source,
                "claude_code_version": VERSION,
                "output_style": "default",
                "agents": ["claude", "general-purpose"],
                "skills": [],
                "plugins": [],
                "analytics_disabled": True,
                "uuid": _new_id(),
                "fast_mode_state": "off",
            }
        )
        for info in self.rate_limits:
            self.emit(
                {
                    "type": "rate_limit_event",
                    "rate_limit_info": info,
                    "uuid": _new_id(),
                    "session_id": self.session_id,
                }
            )
        self.rate_limits = []

    def _tools(self) -> list[str]:
        # Like the real CLI: "" means none, "default" the default set, and
        # names it does not know are dropped silently.
        requested = self.opts.get("tools")
        if requested is None:
            return list(DEFAULT_TOOLS)
        names = [n for value in requested for n in value.replace(",", " ").split()]
        if names == ["default"]:
            return list(DEFAULT_TOOLS)
        return [n for n in names if n in DEFAULT_TOOLS]

    def stream_event(self, event: dict[str, Any], message_id: str) -> None:
        """Emit a stream_event line (only with --include-partial-messages)."""
        if self.partial:
            line = {
                "type": "stream_event",
                "event": event,
                "session_id": self.session_id,
                "parent_tool_use_id": None,
                "uuid": _new_id(),
                "api_message_id": message_id,
            }
            self.emit(line)

    def start_message(self, message_id: str, input_tokens: int) -> None:
        """Emit the status line and message_start/content_block_start events."""
        self.open_message = message_id
        if not self.partial:
            return
        status = {"type": "system", "subtype": "status", "status": "requesting"}
        self.emit(status | {"session_id": self.session_id, "uuid": _new_id()})
        message: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        }
        self.stream_event({"type": "message_start", "message": message}, message_id)
        block = {"type": "text", "text": ""}
        self.stream_event(
            {"type": "content_block_start", "index": 0, "content_block": block}, message_id
        )

    def delta(self, piece: str, message_id: str) -> None:
        """Emit one text delta event."""
        delta = {"type": "text_delta", "text": piece}
        self.stream_event({"type": "content_block_delta", "index": 0, "delta": delta}, message_id)

    def assistant(self, message_id: str, text: str, input_tokens: int) -> None:
        """Emit the complete assistant message, as the real CLI does before block_stop."""
        message = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
            "context_management": None,
        }
        self.emit(
            {
                "type": "assistant",
                "message": message,
                "parent_tool_use_id": None,
                "session_id": self.session_id,
                "uuid": _new_id(),
                "timestamp": _now_iso(),
            }
        )

    def end_message(self, message_id: str, output_tokens: int) -> None:
        """Emit content_block_stop, message_delta and message_stop events."""
        self.open_message = None
        self.stream_event({"type": "content_block_stop", "index": 0}, message_id)
        delta = {"stop_reason": "end_turn", "stop_sequence": None}
        usage = {"output_tokens": output_tokens}
        self.stream_event({"type": "message_delta", "delta": delta, "usage": usage}, message_id)
        self.stream_event({"type": "message_stop"}, message_id)

    def clear(self) -> None:
        """Answer ``/clear`` like the real CLI: conversation_reset, a new session, a result."""
        new_session = _new_id()
        self.emit(
            {
                "type": "conversation_reset",
                "new_conversation_id": new_session,
                "uuid": new_session,
                "trigger": "clear",
                "session_id": self.session_id,
            }
        )
        self.session_id = new_session
        self.init()
        self.result({"num_turns": 0, "stop_reason": None}, {}, 0.0)

    # -- result lines ---------------------------------------------------------

    def result(self, fields: dict[str, Any], usage: dict[str, Any], cost: float) -> dict[str, Any]:
        """Build a result line in the real CLI's key order and print it per format."""
        self.total_cost += cost
        self.total_in += int(usage.get("input_tokens", 0))
        self.total_out += int(usage.get("output_tokens", 0))
        elapsed = int((time.monotonic() - self.started) * 1000)
        line: dict[str, Any] = {
            "duration_api_ms": max(0, elapsed - 5) if cost else 0,
            "stop_reason": fields.pop("stop_reason", "end_turn"),
            "session_id": self.session_id,
            "total_cost_usd": round(self.total_cost, 9),
            "usage": _full_usage(usage),
            "modelUsage": self._model_usage() if self.total_cost else {},
            "permission_denials": [],
            "terminal_reason": fields.pop("terminal_reason", "completed"),
            "fast_mode_state": "off",
            "safety_stops": 0,
            "is_error": fields.pop("is_error", False),
            "num_turns": fields.pop("num_turns", 1),
            "subtype": fields.pop("subtype", "success"),
        }
        line.update(fields)
        line.update(
            {
                "type": "result",
                "duration_ms": elapsed,
                "uuid": _new_id(),
                "queued_turn_count": 0,
                "result_index": self.result_index,
            }
        )
        self.result_index += 1
        if self.output_format in ("stream-json", "json"):
            write_stdout(_dumps(line))
        elif "result" in line:
            write_stdout(str(line["result"]))
        return line

    def _model_usage(self) -> dict[str, Any]:
        return {
            self.model: {
                "inputTokens": self.total_in,
                "outputTokens": self.total_out,
                "cacheReadInputTokens": 0,
                "cacheCreationInputTokens": 0,
                "webSearchRequests": 0,
                "costUSD": round(self.total_cost, 9),
                "contextWindow": 200000,
                "maxOutputTokens": 32000,
            }
        }

    def interrupted(self) -> None:
        """Emit what the real CLI prints on SIGINT: an interrupt note and an error result."""
        content = [{"type": "text", "text": "[Request interrupted by user]"}]
        note = {"role": "user", "content": content}
        self.emit(
            {
                "type": "user",
                "message": note,
                "parent_tool_use_id": None,
                "session_id": self.session_id,
                "uuid": _new_id(),
                "timestamp": _now_iso(),
            }
        )
        if self.open_message is not None:
            # The real CLI closes the abandoned message before its result.
            delta = {"stop_reason": None, "stop_sequence": None}
            usage = {"output_tokens": 1}
            event = {"type": "message_delta", "delta": delta, "usage": usage}
            self.stream_event(event, self.open_message)
            self.stream_event({"type": "message_stop"}, self.open_message)
        fields = {
            "stop_reason": None,
            "terminal_reason": "aborted_streaming",
            "is_error": True,
            "num_turns": 2,
            "subtype": "error_during_execution",
            "errors": ["[ede_diagnostic] result_type=user last_content_type=n/a stop_reason=null"],
        }
        self.result(fields, {"input_tokens": 0, "output_tokens": 0}, 0.0)


def _full_usage(usage: dict[str, Any]) -> dict[str, Any]:
    full: dict[str, Any] = {
        "input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 0,
        "output_tokens_details": {"thinking_tokens": 0},
        "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
        "service_tier": "standard",
        "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
        "inference_geo": "",
        "iterations": [],
        "speed": "standard",
        "fallback_credit": None,
    }
    full.update(usage)
    return full


# -- resumed sessions ---------------------------------------------------------


def project_dir_name(cwd: str) -> str:
    """The real CLI's directory name for ``cwd``: non-alphanumerics (per UTF-16 unit) become
    ``-``; past 200 characters, cut and suffixed with a base-36 hash of the whole path."""
    data = cwd.encode("utf-16-le", "surrogatepass")
    units = [int.from_bytes(data[i : i + 2], "little") for i in range(0, len(data), 2)]
    name = "".join(chr(u) if chr(u).isascii() and chr(u).isalnum() else "-" for u in units)
    if len(name) <= 200:
        return name
    value = 0
    for unit in units:
        value = ((value << 5) - value + unit) & 0xFFFFFFFF
    value = abs(value - (1 << 32) if value >= 1 << 31 else value)
    digits = ""
    while True:
        value, digit = divmod(value, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
        if not value:
            return f"{name[:200]}-{digits}"


def transcript_path(session_id: str) -> Path:
    """Where the real CLI looks for the transcript of ``session_id`` when run in this cwd."""
    cwd = os.getcwd()
    config = os.environ.get("CLAUDE_CONFIG_DIR") or os.path.join(
        os.environ.get("HOME") or os.path.expanduser("~"), ".claude"
    )
    return Path(cwd, config, "projects", project_dir_name(cwd), f"{session_id}.jsonl")


def load_transcript(session_id: str) -> list[dict[str, Any]] | None:
    """The transcript's messages, oldest first along the parentUuid chain; None if absent."""
    path = transcript_path(session_id)
    if not path.is_file():
        return None
    # split("\n"), not splitlines(): the JSON lines may hold raw U+0085 or U+2028 in strings.
    entries = [
        json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()
    ]
    turns = [e for e in entries if e.get("type") in ("user", "assistant")]
    by_id = {e.get("uuid"): e for e in turns}
    chain: list[dict[str, Any]] = []
    entry = turns[-1] if turns else None
    while entry is not None:
        message = entry.get("message") or {}
        chain.append({"role": message.get("role"), "content": message.get("content")})
        entry = by_id.get(entry.get("parentUuid"))
    return chain[::-1]


def no_conversation(session: Session, session_id: str) -> int:
    """Fail like the real CLI when the transcript to resume is missing."""
    write_stderr(f"No conversation found with session ID: {session_id}\n")
    fields = {
        "subtype": "error_during_execution",
        "is_error": True,
        "num_turns": 0,
        "stop_reason": None,
    }
    session.result(fields, {"input_tokens": 0, "output_tokens": 0}, 0.0)
    return 1


def history_text(history: list[dict[str, Any]], prompt: str) -> str:
    """One ``role: text`` line per earlier turn and the new prompt (non-text blocks by type)."""
    lines = []
    for message in [*history, {"role": "user", "content": prompt}]:
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        parts = [
            str(b.get("text")) if b.get("type") == "text" else f"[{b.get('type')}]"
            for b in blocks or []
            if isinstance(b, dict)
        ]
        lines.append(f"{message.get('role')}: {' '.join(parts)}")
    return "\n".join(lines)


# -- scenarios ----------------------------------------------------------------


def _sleep_forever() -> NoReturn:
    while True:
        time.sleep(3600)


def reply_text(session: Session, params: dict[str, Any], text: str, prompt: str) -> bool:
    """Run one successful turn answering `text`; returns False (not an API error)."""
    pieces = split_text(text, params.get("chunks"))
    delay = float(params.get("delay", 0.0))
    input_tokens = max(1, len(prompt.encode()) // 4)
    usage = {"input_tokens": input_tokens, "output_tokens": max(1, len(pieces))}
    usage.update(params.get("usage") or {})
    cost = params.get("cost")
    if cost is None:
        # Sonnet list prices, so the numbers look like the real ones.
        cost = usage["input_tokens"] * 3e-6 + usage["output_tokens"] * 15e-6
    message_id = f"msg_fake_{uuid.uuid4().hex[:20]}"
    session.init()
    session.start_message(message_id, usage["input_tokens"])
    for i, piece in enumerate(pieces):
        if i and delay > 0:
            time.sleep(delay)
        session.delta(piece, message_id)
    session.assistant(message_id, text, usage["input_tokens"])
    session.end_message(message_id, usage["output_tokens"])
    session.result({"api_error_status": None, "result": text}, usage, float(cost))
    return False


def upstream_error_text(status: int, message: str) -> str:
    """Return the result text the real CLI prints for an upstream HTTP error."""
    if status == 401:
        return f"Failed to authenticate. API Error: 401 {message}"
    if status == 429:
        return f"API Error: Request rejected (429) · {message}"
    if status >= 500:
        return (
            f"API Error: {status} {message}. This is a server-side issue, usually temporary "
            "— try again in a moment."
        )
    return f"API Error: {status} {message}"


def _error_kind(status: int) -> str:
    if status == 401:
        return "authentication_failed"
    if status == 429:
        return "rate_limit"
    return "server_error" if status >= 500 else "unknown"


def upstream_error(session: Session, params: dict[str, Any]) -> bool:
    """Run one turn that failed upstream; returns True (an API error)."""
    status = int(params.get("status", 500))
    error_type = str(params.get("error_type", "api_error"))
    message_text = str(params.get("message", "boom"))
    text = str(params.get("result") or upstream_error_text(status, message_text))
    session.init()
    message = {
        "id": _new_id(),
        "model": "<synthetic>",
        "role": "assistant",
        "stop_reason": "stop_sequence",
        "stop_sequence": "",
        "type": "message",
        "usage": {"input_tokens": 0, "output_tokens": 0},
        "content": [{"type": "text", "text": text}],
        "context_management": None,
    }
    session.emit(
        {
            "type": "assistant",
            "message": message,
            "parent_tool_use_id": None,
            "session_id": session.session_id,
            "uuid": _new_id(),
            "timestamp": _now_iso(),
            "error": _error_kind(status),
            "is_api_error_message": True,
            "api_error_status": status,
            "api_error_type": error_type,
        }
    )
    fields = {
        "stop_reason": "stop_sequence",
        "terminal_reason": "api_error",
        "is_error": True,
        "api_error_status": status,
        "api_error_type": error_type,
        "result": text,
    }
    session.result(fields, {"input_tokens": 0, "output_tokens": 0}, 0.0)
    return True


def crash_mid_stream(session: Session, params: dict[str, Any], text: str) -> NoReturn:
    """Start replying `text`, then die with a stack trace on stderr and no result line."""
    message_id = f"msg_fake_{uuid.uuid4().hex[:20]}"
    session.init()
    session.start_message(message_id, 12)
    for piece in split_text(text, params.get("chunks"))[: int(params.get("deltas", 2))]:
        session.delta(piece, message_id)
    write_stderr(
        str(params.get("stderr_text", "Error: boom\n    at foo (file:///fake/cli.js:1:1)\n"))
    )
    sys.exit(int(params.get("code", 3)))


def garbage(session: Session, params: dict[str, Any], text: str, prompt: str) -> bool:
    """Mix unparseable and unknown lines into an otherwise normal reply."""
    for line in GARBAGE_LINES[:3]:
        write_stdout(line)
    session.noise = itertools.cycle(GARBAGE_LINES[3:])
    return reply_text(session, params, text, prompt)


def garbage_only(params: dict[str, Any]) -> NoReturn:
    """Print only garbage and exit without a result line."""
    for line in GARBAGE_LINES:
        write_stdout(line)
    sys.exit(int(params.get("code", 0)))


def big_line(session: Session, params: dict[str, Any], prompt: str) -> bool:
    """Reply with `size` bytes of text so assistant and result lines exceed it."""
    size = int(params.get("size", 10_000_000))
    pattern = "0123456789abcdefghijklmnopqrstuvwxyz "
    text = (pattern * (size // len(pattern) + 1))[:size]
    return reply_text(session, {"chunks": 10} | params, text, prompt)


def hang(session: Session, prompt: str) -> NoReturn:
    """Print init (and message_start with partial messages), then never finish."""
    session.init()
    session.start_message(f"msg_fake_{uuid.uuid4().hex[:20]}", max(1, len(prompt) // 4))
    _sleep_forever()


def stderr_flood(session: Session, params: dict[str, Any], text: str, prompt: str) -> bool:
    """Write `size` bytes to stderr, then reply normally."""
    size = int(params.get("size", 5_000_000))
    line = "stderr flood: " + "x" * 1010 + "\n"
    written = 0
    while written < size:
        chunk = line[: size - written]
        sys.stderr.buffer.write(chunk.encode())
        written += len(chunk)
    sys.stderr.buffer.flush()
    return reply_text(session, params, text, prompt)


def exit_code(params: dict[str, Any]) -> NoReturn:
    """Print nothing on stdout, write stderr_text and exit with `code`."""
    write_stderr(str(params.get("stderr_text", "Error: fake failure\n")))
    sys.exit(int(params.get("code", 2)))


def rate_limit_info(params: dict[str, Any]) -> dict[str, Any]:
    """The rate_limit_info the real CLI prints for a subscription login (``status``,
    ``rateLimitType``, ``utilization``, ``resetsAt`` and every ``unifiedWindows`` entry).

    ``rejected_until`` (Unix seconds) makes the status ``rejected`` before that moment and
    ``then`` (default ``allowed``) after it, so one directive covers a window and its reset.
    """
    status = str(params.get("status", "allowed"))
    until = params.get("rejected_until")
    if isinstance(until, int | float):
        status = "rejected" if time.time() < until else str(params.get("then", "allowed"))
    resets = int(params.get("resets_at") or until or time.time() + 3600)
    kind = str(params.get("window", "five_hour"))
    utilization = float(params.get("utilization", 1.0 if status == "rejected" else 0.5))
    info: dict[str, Any] = {
        "status": status,
        "resetsAt": resets,
        "rateLimitType": kind,
        "utilization": utilization,
        "isUsingOverage": False,
    }
    windows = {kind: {"utilization": utilization, "resetsAt": resets, "status": status}}
    windows.update(params.get("windows") or {})
    info["unifiedWindows"] = windows
    return info


def plan_window(session: Session, params: dict[str, Any], reply: str, prompt: str) -> bool:
    """Report a plan window; a rejected one refuses the turn as the real CLI does."""
    info = rate_limit_info(params)
    session.rate_limits.append(info)
    if info["status"] != "rejected":
        return reply_text(session, params, reply, prompt)
    session.init()
    text = "You've hit your limit · resets soon"
    session.result(
        {
            "stop_reason": "stop_sequence",
            "terminal_reason": "api_error",
            "is_error": True,
            "api_error_status": 429,
            "error": "rate_limit",
            "result": text,
        },
        {"input_tokens": 0, "output_tokens": 0},
        0.0,
    )
    return True


def run_turn(session: Session, params: dict[str, Any], prompt: str) -> bool:
    """Run one turn of the chosen scenario; returns True when it was an API error."""
    name = str(params.get("scenario", "text"))
    scenario = SCENARIO_ALIASES.get(name, name)
    reply = str(params.get("text", "fake reply: " + prompt))
    handlers: dict[str, Callable[[], bool]] = {
        "text": lambda: reply_text(session, params, reply, prompt),
        "echo": lambda: reply_text(session, params, prompt, prompt),
        "echo_history": lambda: reply_text(
            session, params, history_text(session.history, prompt), prompt
        ),
        "slow": lambda: reply_text(session, {"chunks": 20, "delay": 0.25} | params, reply, prompt),
        "upstream_error": lambda: upstream_error(session, params),
        "plan_window": lambda: plan_window(session, params, reply, prompt),
        "crash_mid_stream": lambda: crash_mid_stream(session, params, reply),
        "garbage": lambda: garbage(session, params, reply, prompt),
        "garbage_only": lambda: garbage_only(params),
        "big_line": lambda: big_line(session, params, prompt),
        "hang": lambda: hang(session, prompt),
        "hang_silent": _sleep_forever,
        "stderr_flood": lambda: stderr_flood(session, params, reply, prompt),
        "exit_code": lambda: exit_code(params),
    }
    handler = handlers.get(scenario)
    if handler is None:
        raise CliError(f"Error: unknown fake scenario {scenario!r}")
    return handler()


# -- input and recording ------------------------------------------------------


def read_stdin() -> str:
    """Read all of stdin as text ('' when it is a terminal, as the real CLI skips it)."""
    if sys.stdin.isatty():
        return ""
    return sys.stdin.buffer.read().decode("utf-8", "replace")


def text_prompt(positional: list[str], stdin: str) -> str:
    """Return the text-mode prompt; like the real CLI, join a positional prompt and stdin."""
    prompt = "\n".join(p for p in (positional[0] if positional else "", stdin) if p)
    if not prompt:
        raise CliError(
            "Error: Input must be provided either through stdin or as a prompt argument "
            "when using --print"
        )
    if not prompt.strip():
        raise CliError(
            "Error: Input contained only whitespace. Provide a prompt with text through "
            "stdin or as a prompt argument when using --print"
        )
    return prompt


def stream_json_turns() -> Iterator[tuple[str, str]]:
    """Yield (prompt, raw line) for each user message line on stdin until EOF."""
    while True:
        raw_bytes = sys.stdin.buffer.readline()
        if not raw_bytes:
            return
        raw = raw_bytes.decode("utf-8", "replace")
        if not raw.strip():
            continue
        try:
            message = json.loads(raw)
        except ValueError:
            raise CliError(
                f"Error parsing streaming input line (type=unknown, {len(raw.strip())} chars): "
                "SyntaxError"
            ) from None
        if not isinstance(message, dict) or message.get("type") != "user":
            continue
        content = (message.get("message") or {}).get("content", "")
        if isinstance(content, list):
            blocks = [b for b in content if isinstance(b, dict) and b.get("type") == "text"]
            content = "\n".join(str(b.get("text", "")) for b in blocks)
        yield str(content), raw


class Recorder:
    """Appends one JSON line per turn to the config's "record" file, at least one per run."""

    def __init__(self, argv: list[str]) -> None:
        """Capture what identifies this invocation."""
        self.base: dict[str, Any] = {
            "argv": argv,
            "env": dict(os.environ),
            "cwd": os.getcwd(),
            "pid": os.getpid(),
            "pgid": os.getpgrp(),
        }
        self.path: str | None = None
        self.stdin = ""
        self.written = 0

    def write(self, **fields: Any) -> None:
        """Append a record with the stdin seen for this turn plus `fields`."""
        entry = self.base | {"stdin": self.stdin, "turn": self.written} | fields
        self.written += 1
        if not self.path:
            return
        data = (_dumps(entry) + "\n").encode("utf-8", "surrogateescape")
        # One O_APPEND write per record keeps lines whole when fakes run concurrently.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def ensure_written(self) -> None:
        """Record the invocation if no turn did (usage errors, --version, empty input)."""
        if not self.written:
            self.write()


def prompt_files(opts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each ``--*system-prompt-file`` holds and its permission bits, as the CLI reads it."""
    found = {}
    for flag in ("system-prompt-file", "append-system-prompt-file"):
        path = opts.get(flag)
        if isinstance(path, str):
            with open(path, encoding="utf-8") as file:
                found[flag] = {
                    "text": file.read(),
                    "mode": os.stat(path).st_mode & 0o777,
                    "path": path,
                }
    return found


def spawn_child() -> int:
    """Start `sleep 1000` in our process group; returns its pid."""
    import shutil
    import subprocess

    # An absolute path: the gateway may hand us an environment without PATH.
    sleep = shutil.which("sleep", path="/usr/bin:/bin:/usr/local/bin") or "/bin/sleep"
    # The child inherits stdout/stderr like a real tool subprocess would, so a
    # gateway that kills only the CLI's pid (not its group) never sees EOF.
    return subprocess.Popen([sleep, "1000"], stdin=subprocess.DEVNULL).pid


def _on_sigint(signum: int, frame: object) -> None:
    raise Interrupted


def _on_sigterm(signum: int, frame: object) -> None:
    os._exit(SIGTERM_EXIT)


def main(argv: list[str]) -> int:
    """Run the fake CLI; returns the process exit code."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigint)
    argv0, config_path, args = split_fake_args(argv)
    recorder = Recorder([argv0, *args])
    session: Session | None = None
    try:
        config = load_config(config_path, argv0)
        recorder.path = config.get("record")
        opts, positional = parse_cli(args)
        recorder.base["prompt_files"] = prompt_files(opts)
        if opts.get("version") or opts.get("help"):
            write_stdout(f"{VERSION} (Claude Code)" if opts.get("version") else USAGE)
            return 0
        validate(opts)
        session = Session(opts, config)
        resume = opts.get("resume")
        if isinstance(resume, str):
            history = load_transcript(resume)
            if history is None:
                return no_conversation(session, resume)
            session.history = recorder.base["history"] = history
        if opts.get("input-format") == "stream-json":
            turns = stream_json_turns()
        else:
            recorder.stdin = read_stdin()
            turns = iter([(text_prompt(positional, recorder.stdin), recorder.stdin)])
        last_was_error = False
        for prompt, raw in turns:
            recorder.stdin = raw
            if prompt.strip() == "/clear" and not opts.get("disable-slash-commands"):
                recorder.write(scenario="clear")
                session.clear()
                continue
            directive, prompt = parse_directive(prompt)
            params = {k: v for k, v in config.items() if k != "record"} | directive
            scenario = params.get("scenario", "text")
            extra = {}
            if scenario == "hang" and params.get("spawn_child"):
                extra["child_pid"] = spawn_child()
            recorder.stdin = raw
            recorder.write(scenario=scenario, **extra)
            last_was_error = run_turn(session, params, prompt)
        return 1 if last_was_error else 0
    except CliError as exc:
        write_stderr(f"{exc}\n")
        return 1
    except Interrupted:
        # A second Ctrl-C must not cut the interrupt result short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if session is not None:
            session.interrupted()
        return 0
    except BrokenPipeError:
        # Whoever reads stdout went away; nothing left worth saying.
        os._exit(1)
    finally:
        recorder.ensure_written()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
