"""One pre-started CLI process that serves turns over a stdin it keeps open."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from ccgate.runners.cli_command import user_message
from ccgate.runners.process import GroupProcess

# What one turn's stdout may hold; any other line type means the process is in a state we
# did not expect, and it is retired rather than trusted with another request.
EXPECTED_LINE_TYPES = frozenset({
    "system", "stream_event", "assistant", "user", "result", "control_response",
    "conversation_reset", "rate_limit_event",
})
_CLEAR = [{"type": "text", "text": "/clear"}]


@dataclass(frozen=True)
class PoolKey:
    """What a warm process is bound to: its owner and everything its argv fixes."""

    owner: str
    model: str
    system_prompt: str | None
    append_system_prompt: str | None
    stream: bool


class WarmProcess:
    """A GroupProcess in a private directory, reading one user message per turn."""

    def __init__(self, key: PoolKey, process: GroupProcess, run_dir: str) -> None:
        self.key = key
        self.process = process
        self.run_dir = run_dir
        self.started_at = time.monotonic()
        self.idle_since = self.started_at
        self.served = 0
        # The session a turn must report: None until the first turn, then the one /clear made.
        self.expected_session: str | None = None
        self.sessions: list[str] = []
        self.tainted = False  # printed something unexpected: retire after this turn

    @classmethod
    async def start(cls, key: PoolKey, argv: list[str], env: Mapping[str, str],
                    work_dir: str | None) -> WarmProcess:
        """Start ``argv`` in a new private directory (also its TMPDIR); raise OSError on failure."""
        run_dir = tempfile.mkdtemp(prefix="ccgate-pool-", dir=work_dir)
        try:
            process = await GroupProcess.start(argv, cwd=run_dir, env={**env, "TMPDIR": run_dir})
        except OSError:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        return cls(key, process, run_dir)

    @property
    def pid(self) -> int:
        """The CLI's process id (also its process group id)."""
        return self.process.pgid

    @property
    def alive(self) -> bool:
        """Whether the CLI has not exited (as far as the event loop has noticed)."""
        return self.process.proc.returncode is None

    async def send(self, data: bytes) -> bool:
        """Write one stdin line; return False when the process no longer reads."""
        stdin = self.process.proc.stdin
        if stdin is None or stdin.is_closing():
            return False
        try:
            stdin.write(data)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    async def send_turn(self, content: list[dict[str, object]]) -> bool:
        """Start a turn with ``content`` as the user message."""
        self.served += 1
        return await self.send(user_message(content))

    async def interrupt(self) -> bool:
        """Ask the CLI to end the current turn at once (it answers with a result line)."""
        request = {"type": "control_request", "request_id": f"ccgate-{uuid.uuid4().hex}",
                   "request": {"subtype": "interrupt"}}
        return await self.send(json.dumps(request).encode() + b"\n")

    async def read_until_result(self, timeout: float) -> list[dict[str, object]] | None:
        """Read lines up to and including the turn's ``result``; None on EOF, timeout or junk."""
        lines: list[dict[str, object]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                raw = await asyncio.wait_for(self.process.readline(),
                                             max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return None
            if raw is None:
                return None
            try:
                line = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                return None
            if not isinstance(line, dict) or line.get("type") not in EXPECTED_LINE_TYPES:
                return None
            lines.append(line)
            if line["type"] == "result":
                return lines

    async def reset(self, timeout: float) -> bool:
        """Send ``/clear`` and check it worked: a conversation_reset and a new, clean session."""
        if not await self.send(user_message(_CLEAR)):
            return False
        lines = await self.read_until_result(timeout)
        if lines is None or not any(line["type"] == "conversation_reset" for line in lines):
            return False
        result = lines[-1]
        session = result.get("session_id")
        if result.get("is_error") or not isinstance(session, str) or session in self.sessions:
            return False
        self.expected_session = session
        return True

    async def close(self, grace: float) -> None:
        """End the process (stdin closed first: it exits 0 on its own), then remove its dir."""
        try:
            stdin = self.process.proc.stdin
            if stdin is not None and not stdin.is_closing():
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    stdin.close()
            await self.process.wait(grace)
            await self.process.stop(grace)
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)
