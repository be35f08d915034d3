"""The CLI runner with a warm pool in front: pooled when a process fits, cold otherwise;
``cli_runner`` builds the CLI runner the settings ask for."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator
from typing import Any

from ccgate import tracing
from ccgate.config import Settings
from ccgate.runners.base import RunError, RunEvent, Runner, RunRequest, RunResult, RunStarted
from ccgate.runners.cli import ClaudeCliRunner
from ccgate.runners.cli_command import CliOptions
from ccgate.runners.cli_output import ended_early, next_line
from ccgate.runners.pool import PoolConfig, WarmPool
from ccgate.runners.run_dir import SystemPrompts
from ccgate.runners.sandbox import sandbox_for
from ccgate.runners.stream_json import StreamParser
from ccgate.runners.warm_process import EXPECTED_LINE_TYPES, WarmProcess


class PooledCliRunner:
    """A Runner that serves from warm processes of the request's own key, else runs cold."""

    def __init__(self, options: CliOptions, config: PoolConfig) -> None:
        self.options = options
        self.cold = ClaudeCliRunner(options)
        self.pool = WarmPool(options, config)

    async def run(self, request: RunRequest) -> AsyncGenerator[RunEvent, None]:
        """Yield the run's events from a warm process when one fits, else from a cold start."""
        # A warm process's argv is fixed, so earlier turns (``--resume``) need a cold start.
        key = None if request.history else self.pool.key_for(request)
        # Counted before checkout, so a refill it triggers sees this run against the cap.
        self.pool.active_runs += 1
        try:
            if key is not None:
                with tracing.span("ccgate.pool_checkout"):
                    process = await self.pool.checkout(key, SystemPrompts.of(request))
                    tracing.add_attributes(hit=process is not None)
            else:
                process = None
            if key is None:
                self.pool.counters.bypasses += 1
            if process is None:
                async with contextlib.aclosing(self.cold.run(request)) as events:
                    async for event in events:
                        yield event
            else:
                async with contextlib.aclosing(self._serve(process, request)) as events:
                    async for event in events:
                        yield event
        finally:
            self.pool.active_runs -= 1
            self.pool.refill()  # a slot under the concurrency cap just freed up

    async def _serve(
        self, process: WarmProcess, request: RunRequest
    ) -> AsyncGenerator[RunEvent, None]:
        outcome = "cancelled"
        try:
            if not await process.send_turn(request.content):
                raise await ended_early(process.process)
            parser = StreamParser(partial=request.stream)
            deadline = time.monotonic() + request.timeout_secs
            while parser.result is None:
                line = await next_line(process.process, request, deadline)
                if line is None:
                    raise await ended_early(process.process)
                if not _expected(line):
                    # The cold path would skip it too; but this process is not trusted again.
                    process.tainted = True
                for event in parser.feed(line):
                    if isinstance(event, RunStarted):
                        _check_session(process, event.session_id)
                    if isinstance(event, RunResult):
                        outcome = "done"
                    yield event
        except RunError:
            outcome = "error"
            raise
        finally:
            self.pool.release(process, outcome)

    def stats(self) -> dict[str, Any]:
        """Pool counters and shape (hits, misses, spawns, retirements, resets...)."""
        return self.pool.stats()

    async def aclose(self) -> None:
        """Stop every pooled process and wait for the cold runs' clean-up."""
        await self.pool.aclose()
        await self.cold.aclose()


def _expected(line: bytes) -> bool:
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(message, dict) and message.get("type") in EXPECTED_LINE_TYPES


def _check_session(process: WarmProcess, session_id: str | None) -> None:
    expected = process.expected_session
    if session_id is None or (expected is not None and session_id != expected):
        raise RunError("cli_error", "The warm claude CLI process is not in a fresh session")
    if session_id not in process.sessions:
        process.sessions.append(session_id)


def cli_runner(settings: Settings, executable: str | None) -> Runner:
    """The CLI runner for ``settings`` (pooled unless CCGATE_POOL_MODE=off); with no executable
    found, ``claude`` is looked up on PATH again at each run, so installing it needs no restart."""
    options = CliOptions(
        executable=executable or settings.claude_path or "claude",
        base_env=settings.cli_base_env,
        allow_tools=settings.allow_tools,
        upstream_retries=settings.upstream_retries,
        upstream_timeout_secs=settings.upstream_timeout_secs,
        kill_grace_secs=settings.kill_grace_secs,
        work_dir=settings.work_dir,
        sandbox=sandbox_for(settings),
    )
    if settings.pool_mode == "off":
        return ClaudeCliRunner(options)
    return PooledCliRunner(
        options,
        PoolConfig(
            mode=settings.pool_mode,
            max_processes=settings.pool_max_processes,
            min_idle=settings.pool_min_idle,
            idle_secs=settings.pool_idle_secs,
            max_requests=settings.pool_max_requests,
            concurrency=settings.concurrency,
        ),
    )
