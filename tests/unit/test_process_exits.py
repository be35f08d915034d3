"""Child exits: watched on the event loop (a pidfd), not by a thread per child."""

from __future__ import annotations

import threading

from ccgate.runners.process import GroupProcess


async def test_group_process_exit_is_seen_without_a_waiter_thread() -> None:
    """A started CLI's exit code arrives and no waitpid thread was started for it."""
    process = await GroupProcess.start(["/bin/sh", "-c", "sleep 0.2; exit 3"], cwd="/", env={})
    waiters = [t.name for t in threading.enumerate() if "waitpid" in t.name]
    assert await process.wait(5.0) == 3
    await process.stop(1.0)
    assert waiters == []


async def test_group_process_many_children_all_reaped() -> None:
    """Several children at once each report their own exit code."""
    processes = [
        await GroupProcess.start(["/bin/sh", "-c", f"exit {code}"], cwd="/", env={})
        for code in range(4)
    ]
    assert [await p.wait(5.0) for p in processes] == [0, 1, 2, 3]
    for process in processes:
        await process.stop(1.0)
