"""The claude CLI back end: one locked-down subprocess per run, stream-json in and out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator

import structlog

from ccgate import metrics, tracing
from ccgate.runners.base import RunError, RunEvent, RunRequest, RunResult
from ccgate.runners.cli_command import (
    CliOptions,
    PromptFiles,
    build_argv,
    build_env,
    user_message,
)
from ccgate.runners.cli_output import ended_early, next_line
from ccgate.runners.process import GroupProcess
from ccgate.runners.run_dir import RunDir, SystemPrompts, start_cli
from ccgate.runners.stream_json import StreamParser
from ccgate.runners.transcript import Transcript, remove_transcript, write_transcript

log = structlog.get_logger("ccgate.runner")

_EXIT_WAIT_AFTER_RESULT_SECS = 2.0


class ClaudeCliRunner:
    """Runs each RunRequest as ``claude -p`` in a throwaway directory and its own process group."""

    def __init__(self, options: CliOptions) -> None:
        self.options = options
        self._reaping: set[asyncio.Task[None]] = set()

    async def run(self, request: RunRequest) -> AsyncGenerator[RunEvent, None]:
        """Yield the run's events; raise RunError on failure; cancelling kills the group."""
        try:
            run_dir = RunDir.create(self.options.work_dir, "ccgate-run-")
        except OSError as exc:
            raise RunError(
                "cli_error",
                f"Could not create the run directory under CCGATE_WORK_DIR: {exc.strerror or exc}",
            ) from None
        env = build_env(self.options, run_dir.path)
        transcript: Transcript | None = None
        process: GroupProcess | None = None
        finished = False
        try:
            if request.history:
                transcript = await _write_history(request, env, run_dir.path)
            argv = build_argv(
                self.options,
                request,
                prompt_files=_write_prompts(run_dir, request),
                resume=transcript.session_id if transcript else None,
            )
            spawned = time.monotonic()
            with tracing.span("ccgate.spawn", warm=False):
                process = await _start(self.options, run_dir, argv, env)
            # Written concurrently with reading: a CLI that stops reading stdin must not hold
            # the run past its deadline, nor deadlock against a full stdout pipe.
            writer = asyncio.create_task(process.write_and_close(user_message(request.content)))
            try:
                async for event in self._events(process, request):
                    if spawned:
                        metrics.observe_cli_spawn(time.monotonic() - spawned)
                        spawned = 0.0
                    finished = isinstance(event, RunResult)
                    yield event
            finally:
                writer.cancel()
        finally:
            # The answer out, the CLI exits on its own (~50 ms) off the caller's path; otherwise
            # its group is stopped now. Either way a task owns the clean-up, so a second
            # cancellation cannot leave the run's files behind.
            cleanup = self._clean_up(process, run_dir, env, transcript, wait_exit=finished)
            if not finished:
                await asyncio.shield(cleanup)

    def _clean_up(
        self,
        process: GroupProcess | None,
        run_dir: RunDir,
        env: dict[str, str],
        transcript: Transcript | None,
        *,
        wait_exit: bool,
    ) -> asyncio.Task[None]:
        async def clean_up() -> None:
            try:
                if process is not None:
                    if wait_exit:
                        await process.wait(_EXIT_WAIT_AFTER_RESULT_SECS)
                    await process.stop(self.options.kill_grace_secs)
            finally:
                # Only once the CLI is gone: it may still add files to its project directory.
                run_dir.remove(env)
                if transcript is not None:
                    remove_transcript(transcript)

        task = asyncio.create_task(clean_up(), name="ccgate-reap")
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)
        return task

    async def aclose(self) -> None:
        """Wait until every finished run's process has exited and its directory is gone."""
        while self._reaping:
            await asyncio.gather(*self._reaping, return_exceptions=True)

    async def _events(self, process: GroupProcess, request: RunRequest) -> AsyncIterator[RunEvent]:
        parser = StreamParser(partial=request.stream)
        deadline = time.monotonic() + request.timeout_secs
        while True:
            line = await next_line(process, request, deadline)
            if line is None:
                break
            for event in parser.feed(line):
                if isinstance(event, RunResult) and parser.unparsed_lines:
                    # Output the parser did not understand: worth knowing after a CLI upgrade.
                    log.info("cli_output_skipped", lines=parser.unparsed_lines)
                yield event
            if parser.result is not None:
                return
        raise await ended_early(process)


async def _write_history(request: RunRequest, env: dict[str, str], run_dir: str) -> Transcript:
    """Write the earlier turns as a transcript for this run alone; RunError if unusable."""
    writing = asyncio.ensure_future(
        asyncio.to_thread(
            write_transcript, request.history, env=env, cwd=run_dir, model=request.model
        )
    )
    try:
        return await asyncio.shield(writing)
    except asyncio.CancelledError:
        # A thread cannot be stopped: once it is done, remove whatever it wrote.
        writing.add_done_callback(_remove_written)
        raise
    except ValueError as exc:
        raise RunError("invalid_request", f"Invalid history: {exc}") from None
    except OSError as exc:
        raise RunError(
            "cli_error",
            f"Could not write the earlier turns for the claude CLI: {exc.strerror or exc}",
        ) from None


def _write_prompts(run_dir: RunDir, request: RunRequest) -> PromptFiles:
    """The request's system prompts as files in the run directory; RunError if unusable."""
    try:
        return run_dir.write_prompts(SystemPrompts.of(request))
    except ValueError:
        raise RunError("invalid_request", "The system prompt is not valid Unicode text") from None
    except OSError as exc:
        raise RunError(
            "cli_error",
            f"Could not write the system prompt for the claude CLI: {exc.strerror or exc}",
        ) from None


async def _start(
    options: CliOptions, run_dir: RunDir, argv: list[str], env: dict[str, str]
) -> GroupProcess:
    """Start the CLI; any failure to start is ``cli_unavailable`` (the caller removes the dir)."""
    try:
        return await start_cli(options, run_dir, argv, env)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        # The path is for the operator's log; key holders see only what to do about it.
        log.warning("cli_start_failed", path=options.executable, reason=reason)
        raise RunError(
            "cli_unavailable",
            f"Could not start the claude CLI: {reason}. Install it (npm install -g "
            "@anthropic-ai/claude-code) or set CCGATE_CLAUDE_PATH.",
        ) from None


def _remove_written(writing: asyncio.Future[Transcript]) -> None:
    if not writing.cancelled() and writing.exception() is None:
        remove_transcript(writing.result())


async def probe_version(executable: str, timeout: float = 15.0) -> str | None:
    """Return what ``claude --version`` prints (e.g. ``2.1.330 (Claude Code)``), or None."""
    try:
        proc = await asyncio.create_subprocess_exec(
            executable,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    text = out.decode("utf-8", "replace").strip()
    return text.splitlines()[0] if proc.returncode == 0 and text else None
