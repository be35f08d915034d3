"""Earlier turns of a conversation, handed to the claude CLI as a session it resumes.

Lines written to the CLI's stdin are not replayed faithfully (it reorders assistant lines and
runs one turn per user line), but a session transcript is: the run's earlier turns are written
as ``<config dir>/projects/<sanitized cwd>/<uuid>.jsonl`` and the CLI gets ``--resume <uuid>``.
The run's cwd is a fresh throwaway directory, so its project directory belongs to that run alone
and is removed whole afterwards.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Written as the transcript's "version"; the pinned CLI the gateway is tested against.
CLI_VERSION = "2.1.330"
# The CLI cuts longer project directory names and appends a hash of the whole path.
_PROJECT_NAME_MAX = 200
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_BLOCK_KEYS: Mapping[str, frozenset[str]] = {
    "text": frozenset({"type", "text"}),
    "image": frozenset({"type", "source"}),
    "document": frozenset({"type", "source", "title", "context", "citations"}),
}
_SOURCE_TYPES: Mapping[str, frozenset[str]] = {
    "image": frozenset({"base64"}),
    "document": frozenset({"base64", "text"}),
}


@dataclass(frozen=True)
class Transcript:
    """One run's synthesized session: the id to resume and the directory that holds it."""

    session_id: str
    project_dir: Path

    @property
    def path(self) -> Path:
        """The transcript file the CLI reads on ``--resume``."""
        return self.project_dir / f"{self.session_id}.jsonl"


def _utf16_units(text: str) -> list[int]:
    data = text.encode("utf-16-le", "surrogatepass")
    return [int.from_bytes(data[i : i + 2], "little") for i in range(0, len(data), 2)]


def _path_hash(units: Sequence[int]) -> str:
    # JavaScript's ``(h << 5) - h + charCodeAt(i) | 0`` over UTF-16 units, as abs() in base 36.
    value = 0
    for unit in units:
        value = ((value << 5) - value + unit) & 0xFFFFFFFF
    if value >= 1 << 31:
        value -= 1 << 32
    value = abs(value)
    digits = ""
    while True:
        value, digit = divmod(value, 36)
        digits = _BASE36[digit] + digits
        if not value:
            return digits


def sanitized_project_dir(cwd: str) -> str:
    """The CLI's project directory name for ``cwd``: every character but ASCII letters and
    digits becomes ``-`` (per UTF-16 unit); past 200 characters, cut and suffixed with a hash."""
    units = _utf16_units(cwd)
    name = "".join(chr(u) if chr(u).isascii() and chr(u).isalnum() else "-" for u in units)
    if len(name) <= _PROJECT_NAME_MAX:
        return name
    return f"{name[:_PROJECT_NAME_MAX]}-{_path_hash(units)}"


def config_dir(env: Mapping[str, str], cwd: str) -> Path:
    """The CLI's config directory under ``env``: CLAUDE_CONFIG_DIR, else ``$HOME/.claude``."""
    configured = env.get("CLAUDE_CONFIG_DIR")
    if configured:
        # A relative path is relative to the CLI's working directory, like its own file calls.
        return Path(cwd) / configured
    home = env.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
    return Path(home) / ".claude"


def project_dir(env: Mapping[str, str], cwd: str) -> Path:
    """The directory the CLI run in ``cwd`` with ``env`` keeps its project files in (it makes
    it on every start, even with ``--no-session-persistence``)."""
    real_cwd = os.path.realpath(cwd)  # the CLI sees its cwd with symlinks resolved
    return config_dir(env, real_cwd) / "projects" / sanitized_project_dir(real_cwd)


def locate_transcript(env: Mapping[str, str], cwd: str) -> Transcript:
    """A new session id and the project directory the CLI looks in when run in ``cwd``."""
    return Transcript(str(uuid.uuid4()), project_dir(env, cwd))


def _block(block: Any, role: str, where: str) -> dict[str, Any]:
    if not isinstance(block, dict):
        raise ValueError(f"{where} must be an object")
    kind = block.get("type")
    allowed = ("text",) if role == "assistant" else ("text", "image", "document")
    if not isinstance(kind, str) or kind not in allowed:
        raise ValueError(
            f"{where} has type {kind!r}; {role} turns may hold only {', '.join(allowed)} blocks"
        )
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise ValueError(f"{where} needs a string 'text'")
    else:
        source = block.get("source")
        if not isinstance(source, dict) or source.get("type") not in _SOURCE_TYPES[kind]:
            raise ValueError(
                f"{where} needs a 'source' of type {' or '.join(sorted(_SOURCE_TYPES[kind]))}"
            )
    return {k: v for k, v in block.items() if k in _BLOCK_KEYS[kind]}


def validated_history(history: Sequence[Any]) -> list[dict[str, Any]]:
    """The turns as ``{"role", "content": [blocks]}``; raise ValueError naming the first fault.

    Turns alternate user/assistant, start with user and end with assistant; a string content
    becomes one text block; blocks keep only the fields the CLI forwards upstream.
    """
    if not history:
        raise ValueError("history is empty")
    turns = []
    for index, turn in enumerate(history):
        where = f"history[{index}]"
        expected = "user" if index % 2 == 0 else "assistant"
        role = turn.get("role") if isinstance(turn, dict) else None
        if role != expected:
            raise ValueError(
                f"{where} has role {role!r} but {expected!r} was expected: turns "
                "alternate user/assistant, starting with user"
            )
        content = turn.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list) or not content:
            raise ValueError(f"{where}.content must be a non-empty list of blocks")
        blocks = [_block(b, role, f"{where}.content[{i}]") for i, b in enumerate(content)]
        turns.append({"role": role, "content": blocks})
    if turns[-1]["role"] != "assistant":
        raise ValueError("history must end with an assistant turn")
    return turns


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def transcript_lines(
    history: Sequence[Any], session_id: str, cwd: str, model: str, *, version: str = CLI_VERSION
) -> list[str]:
    """The transcript's JSON lines for ``history``, each turn the child of the one before.

    Raises ValueError for history that does not alternate, does not end with an assistant
    turn, or holds blocks other than text, image and document.
    """
    lines = []
    parent: str | None = None
    for turn in validated_history(history):
        role = turn["role"]
        message: dict[str, Any] = {"role": role, "content": turn["content"]}
        if role == "assistant":
            message = {
                "id": f"msg_ccgate_{uuid.uuid4().hex[:24]}",
                "type": "message",
                "model": model,
                **message,
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }
        entry_id = str(uuid.uuid4())
        entry = {
            "parentUuid": parent,
            "isSidechain": False,
            "type": role,
            "message": message,
            "uuid": entry_id,
            "timestamp": _timestamp(),
            "userType": "external",
            "cwd": cwd,
            "sessionId": session_id,
            "version": version,
        }
        lines.append(json.dumps(entry, ensure_ascii=False, separators=(",", ":")))
        parent = entry_id
    return lines


def write_transcript(
    history: Sequence[Any], *, env: Mapping[str, str], cwd: str, model: str
) -> Transcript:
    """Write ``history`` where the CLI run in ``cwd`` with ``env`` finds it; return where.

    The project directory must not exist yet (it is the run's alone; FileExistsError
    otherwise) and the file is created 0600. Raises ValueError for history that is not valid.
    """
    transcript = locate_transcript(env, cwd)
    lines = transcript_lines(history, transcript.session_id, os.path.realpath(cwd), model)
    transcript.project_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    transcript.project_dir.mkdir(mode=0o700)
    try:
        fd = os.open(transcript.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write("\n".join(lines) + "\n")
    except BaseException:
        remove_transcript(transcript)
        raise
    return transcript


def remove_transcript(transcript: Transcript) -> None:
    """Delete the run's whole project directory (the transcript and whatever the CLI added)."""
    shutil.rmtree(transcript.project_dir, ignore_errors=True)
