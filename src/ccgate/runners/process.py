"""A subprocess in its own process group: unbounded stdout lines, bounded stderr, group kill."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping

_READ_CHUNK = 1 << 16
STDERR_KEEP_BYTES = 16 * 1024


if sys.version_info < (3, 12):  # removed in 3.14; 3.12 watches exits this way itself

    class _PidfdWatcher(asyncio.AbstractChildWatcher):
        """Python 3.12's child watcher on 3.11: a child's exit is a readable pidfd on the running
        loop. 3.11's default starts a thread per child, blocked in waitpid; starting it and
        handing its news back to the loop cost a measured part of every run's spawn and end."""

        def __enter__(self) -> _PidfdWatcher:
            return self

        def __exit__(self, *exc_info: object) -> None:
            pass

        def is_active(self) -> bool:
            return True

        def close(self) -> None:
            pass

        def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
            pass

        def add_child_handler(
            self, pid: int, callback: Callable[..., object], *args: object
        ) -> None:
            loop = asyncio.get_running_loop()
            pidfd = os.pidfd_open(pid)
            loop.add_reader(pidfd, self._do_wait, loop, pid, pidfd, callback, args)

        def _do_wait(
            self,
            loop: asyncio.AbstractEventLoop,
            pid: int,
            pidfd: int,
            callback: Callable[..., object],
            args: tuple[object, ...],
        ) -> None:
            loop.remove_reader(pidfd)
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                returncode = 255  # reaped elsewhere: as asyncio's own watchers report it
            else:
                returncode = os.waitstatus_to_exitcode(status)
            os.close(pidfd)
            callback(pid, returncode, *args)

        def remove_child_handler(self, pid: int) -> bool:
            return True  # asyncio never calls it for its own subprocesses


_pidfd_installed = False


def watch_exits_with_pidfd() -> None:
    """On Python 3.11 with pidfds (Linux 5.3+), watch child exits as 3.12 does: no thread
    per child. Later Pythons do so already; elsewhere asyncio's default stays."""
    global _pidfd_installed
    if _pidfd_installed or sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    _pidfd_installed = True
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return  # a kernel or sandbox without pidfds
    if sys.version_info < (3, 12):  # for mypy: the watcher exists only there
        asyncio.get_event_loop_policy().set_child_watcher(_PidfdWatcher())


class GroupProcess:
    """One child started with ``start_new_session`` so a kill reaches everything it spawned."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pgid = proc.pid  # start_new_session makes the child a group leader
        self._buffer = bytearray()
        self._eof = False
        self._stderr_tail = bytearray()
        self._stderr_trimmed = False
        self._stderr_task = asyncio.create_task(self._drain_stderr())

    @classmethod
    async def start(cls, argv: list[str], *, cwd: str, env: Mapping[str, str]) -> GroupProcess:
        """Start ``argv`` with piped stdio in a new session; raise OSError if it cannot start."""
        watch_exits_with_pidfd()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
        )
        return cls(proc)

    async def write_and_close(self, data: bytes) -> None:
        """Write ``data`` to stdin and close it; a child that already quit is no error."""
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(data)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                stdin.close()

    async def readline(self) -> bytes | None:
        """Return the next stdout line without its newline, of any length; None at end of output."""
        stdout = self.proc.stdout
        assert stdout is not None
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                return line
            if self._eof:
                if self._buffer:
                    line = bytes(self._buffer)
                    self._buffer.clear()
                    return line
                return None
            chunk = await stdout.read(_READ_CHUNK)
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True

    async def _drain_stderr(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None
        while chunk := await stderr.read(_READ_CHUNK):
            self._stderr_tail += chunk
            if len(self._stderr_tail) > STDERR_KEEP_BYTES:
                del self._stderr_tail[: len(self._stderr_tail) - STDERR_KEEP_BYTES]
                self._stderr_trimmed = True

    async def stderr_tail(self, lines: int = 10) -> str:
        """Return the last ``lines`` lines the child wrote to stderr (bounded in memory)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._stderr_task), 0.5)
        text = self._stderr_tail.decode("utf-8", "replace")
        if self._stderr_trimmed:
            # The first kept line was cut mid-way: drop it, it may hold half a secret that
            # no longer looks like one.
            text = text.partition("\n")[2]
        return "\n".join(text.strip().splitlines()[-lines:])

    async def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the child to exit; return its code or None."""
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            return None

    def signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the whole process group; a group already gone is fine."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    async def stop(self, grace: float) -> None:
        """SIGTERM the group, wait ``grace`` seconds, then SIGKILL whatever is left of it."""
        if self.proc.returncode is None:
            self.signal_group(signal.SIGTERM)
            await self.wait(grace)
        # Always sweep the group: the leader may be gone while children it started live on.
        self.signal_group(signal.SIGKILL)
        if self.proc.returncode is None:
            await self.wait(5.0)
        # Reading both pipes to their end lets asyncio close the transport cleanly.
        with contextlib.suppress(asyncio.TimeoutError, OSError):
            await asyncio.wait_for(self._discard_stdout(), 2.0)
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, OSError):
            await asyncio.wait_for(self._stderr_task, 2.0)

    async def _discard_stdout(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        self._buffer.clear()
        while await stdout.read(_READ_CHUNK):
            pass
        self._eof = True
