"""The private directory of one CLI process: its cwd, its TMPDIR and its system prompt files.

A cold run has one for the run, a warm process one for its whole life. Removing it also removes
the project directory the CLI makes for its cwd under its config directory (it does so even
with ``--no-session-persistence``), so runs leave nothing behind in the operator's
``~/.claude/projects``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from ccgate.runners.base import RunRequest
from ccgate.runners.cli_command import CliOptions, PromptFiles
from ccgate.runners.process import GroupProcess
from ccgate.runners.transcript import project_dir

SYSTEM_PROMPT_FILE = "system-prompt.txt"
APPEND_SYSTEM_PROMPT_FILE = "append-system-prompt.txt"


@dataclass(frozen=True)
class SystemPrompts:
    """A run's system prompt and appended system prompt (None: not set)."""

    system: str | None = None
    append: str | None = None

    @classmethod
    def of(cls, request: RunRequest) -> SystemPrompts:
        """The system prompts ``request`` sets."""
        return cls(request.system_prompt, request.append_system_prompt)

    def digest(self) -> str:
        """SHA-256 over both prompts (unset and empty differ): what warm processes are keyed
        by, so the pool never holds the text in its keys."""
        encoded = json.dumps([self.system, self.append]).encode("ascii")
        return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True)
class RunDir:
    """A fresh 0700 directory with a symlink-free path (the CLI names its project by it)."""

    path: str

    @classmethod
    def create(cls, work_dir: str | None, prefix: str) -> RunDir:
        """Make a new directory below ``work_dir`` (the system temp dir when None)."""
        # A new directory made in a symlink-free parent has a symlink-free path: resolving
        # the parent once spares every run a walk over its path's components.
        return cls(tempfile.mkdtemp(prefix=prefix, dir=_real_parent(work_dir)))

    def write_prompts(self, prompts: SystemPrompts) -> PromptFiles:
        """Write each prompt that is set as a 0600 file here; return the paths for argv.

        Raises UnicodeEncodeError (a ValueError) for text that is not valid Unicode.
        """
        return PromptFiles(
            system=self._write(SYSTEM_PROMPT_FILE, prompts.system),
            append=self._write(APPEND_SYSTEM_PROMPT_FILE, prompts.append),
        )

    def _write(self, name: str, text: str | None) -> str | None:
        if text is None:
            return None
        data = text.encode("utf-8")
        path = os.path.join(self.path, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        return path

    def remove(self, env: Mapping[str, str]) -> None:
        """Delete this directory and the project directory that the CLI, run here with ``env``,
        made for it; call it once the CLI has exited (it may still write there)."""
        shutil.rmtree(project_dir(env, self.path), ignore_errors=True)
        shutil.rmtree(self.path, ignore_errors=True)


@functools.lru_cache(maxsize=8)
def _real_parent(work_dir: str | None) -> str:
    return os.path.realpath(work_dir if work_dir is not None else tempfile.gettempdir())


async def start_cli(
    options: CliOptions, run_dir: RunDir, argv: list[str], env: Mapping[str, str]
) -> GroupProcess:
    """Start ``argv`` in ``run_dir``, inside the configured sandbox; raise OSError or
    ValueError when it cannot start."""
    wrapped = options.sandbox.wrap(argv, run_dir=run_dir.path, env=env)
    return await GroupProcess.start(wrapped, cwd=run_dir.path, env=env)
