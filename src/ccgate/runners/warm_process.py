"""One pre-started CLI process that serves turns over a stdin it keeps open."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ccgate.runners.cli_command import CliOptions, PromptFiles, build_env, user_message
from ccgate.runners.process import GroupProcess
from ccgate.runners.run_dir import RunDir, SystemPrompts, start_cli
from ccgate.turns import ContentBlock

# What one turn's stdout may hold; any other line type means the process is in a state we
# did not expect, and it is retired rather than trusted with another request.
EXPECTED_LINE_TYPES = frozenset(
    {
        "system",
        "stream_event",
        "assistant",
        "user",
        "result",
        "control_response",
        "conversation_reset",
        "rate_limit_event",
    }
)
_CLEAR: list[ContentBlock] = [{"type": "text", "text": "/clear"}]


@dataclass(frozen=True)
class PoolKey:
    """What a warm process is bound to: its owner and everything its argv fixes. The system
    prompts appear only as a SHA-256 (``SystemPrompts.digest``), never as text."""

    owner: str
    model: str
    prompts_sha256: str
    stream: bool


class WarmProcess:
    """A GroupProcess in a private directory, reading one user message per turn."""

    def __init__(
        self, key: PoolKey, process: GroupProcess, run_dir: RunDir, env: Mapping[str, str]
    ) -> None:
        self.key = key
        self.process = process
        self.run_dir = run_dir
        self.env = env
        self.started_at = time.monotonic()
        self.idle_since = self.started_at
        self.served = 0
        # The session a turn must report: None until the first turn, then the one /clear made.
        self.expected_session: str | None = None
        self.sessions: list[str] = []
        self.tainted = False  # printed something unexpected: retire after this turn

    @classmethod
    async def start(
        cls,
        key: PoolKey,
        options: CliOptions,
        prompts: SystemPrompts,
        argv_for: Callable[[PromptFiles], list[str]],
    ) -> WarmProcess:
        """Start the CLI in a new private directory (its cwd and TMPDIR, holding its system
        prompt files for its whole life); whatever fails, the directory goes with it."""
        run_dir = RunDir.create(options.work_dir, "ccgate-pool-")
        env = build_env(options, run_dir.path)
        try:
            argv = argv_for(run_dir.write_prompts(prompts))
            process = await start_cli(options, run_dir, argv, env)
        except BaseException:
            run_dir.remove(env)
            raise
        return cls(key, process, run_dir, env)

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

    async def send_turn(self, content: Sequence[ContentBlock]) -> bool:
        """Start a turn with ``content`` as the user message."""
        self.served += 1
        return await self.send(user_message(content))

    async def interrupt(self) -> bool:
        """Ask the CLI to end the current turn at once (it answers with a result line)."""
        request = {
            "type": "control_request",
            "request_id": f"ccgate-{uuid.uuid4().hex}",
            "request": {"subtype": "interrupt"},
        }
        return await self.send(json.dumps(request).encode() + b"\n")

    async def read_until_result(self, timeout: float) -> list[dict[str, object]] | None:
        """Read lines up to and including the turn's ``result``; None on EOF, timeout or junk."""
        lines: list[dict[str, object]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                raw = await asyncio.wait_for(
                    self.process.readline(), max(0.0, deadline - time.monotonic())
                )
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
            self.run_dir.remove(self.env)
