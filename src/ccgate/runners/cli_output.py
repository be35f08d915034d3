"""Reading a claude CLI's stdout under a run's limits, for cold and warm processes alike."""

from __future__ import annotations

import asyncio
import time

from ccgate.runners.base import RunError, RunRequest
from ccgate.runners.process import GroupProcess
from ccgate.runners.redaction import redact

_EXIT_WAIT_SECS = 5.0


async def ended_early(process: GroupProcess) -> RunError:
    """The RunError for a CLI whose output ended before a result: exit code and stderr tail."""
    code = await process.wait(_EXIT_WAIT_SECS)
    tail = redact(await process.stderr_tail())
    detail = f": {tail}" if tail else " and printed nothing on stderr"
    if code not in (0, None):
        return RunError(
            "cli_error", f"The claude CLI exited with code {code} before finishing{detail}"
        )
    return RunError("cli_error", f"The claude CLI ended without a result{detail}")


async def next_line(process: GroupProcess, request: RunRequest, deadline: float) -> bytes | None:
    """Read the next stdout line under the request's wall and idle limits; raise RunError."""
    remaining = deadline - time.monotonic()
    idle = request.idle_timeout_secs
    idle_binds = 0 < idle < remaining
    if remaining <= 0:
        raise _timeout("wall", request.timeout_secs)
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancel that lands just as
        # a line arrives, and the run would go on for a client that has left.
        async with asyncio.timeout(idle if idle_binds else remaining):
            return await process.readline()
    except TimeoutError:
        # Name the limit that was actually waited on: timers may fire a hair early.
        raise _timeout(
            "idle" if idle_binds else "wall", idle if idle_binds else request.timeout_secs
        ) from None


def _timeout(kind: str, secs: float) -> RunError:
    if kind == "idle":
        return RunError("timeout", f"idle timeout: the run produced no output for {secs:g} s")
    return RunError("timeout", f"wall-clock timeout: the run did not finish within {secs:g} s")
