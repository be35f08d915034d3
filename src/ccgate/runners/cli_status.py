"""Is the claude CLI installed, and which version: found at start, rechecked while missing."""

from __future__ import annotations

from dataclasses import dataclass

from ccgate.config import Settings
from ccgate.runners.cli import probe_version

INSTALL_HINT = (
    "install it with 'npm install -g @anthropic-ai/claude-code' and log in once with "
    "'claude' (or set ANTHROPIC_API_KEY), or point CCGATE_CLAUDE_PATH at it"
)


@dataclass
class CliStatus:
    """The CLI ccgate will run: its path and version, or the problem that stops it."""

    settings: Settings
    path: str | None = None
    version: str | None = None
    problem: str | None = None

    async def refresh(self) -> CliStatus:
        """Look the CLI up again if it was missing; probe its version when it is new."""
        if self.path is not None and self.version is not None:
            return self
        path = self.settings.resolve_claude()
        if path is None:
            where = (
                f"at CCGATE_CLAUDE_PATH={self.settings.claude_path}"
                if self.settings.claude_path
                else "on PATH"
            )
            self.path, self.version = None, None
            self.problem = f"claude CLI not found {where}: {INSTALL_HINT}"
            return self
        self.path = path
        self.version = await probe_version(path)
        self.problem = (
            None
            if self.version
            else (f"claude CLI at {path} did not answer 'claude --version'; reinstall it")
        )
        return self
