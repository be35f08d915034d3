"""Gateway overhead of the CLI path: /api/v1/run through ccgate versus the same fake CLI run
directly, p50 and p99 at several concurrencies.

Run by hand (not part of the test suite):

    .venv/bin/python -m bench.overhead --requests 400 --concurrency 1 16

Both sides run the project's fast fake ``claude`` (tests/support/fake_claude.py) with the same
argv ccgate builds, so the difference is what ccgate adds: HTTP, auth, the queue round trip
through the store, the audit row, and process management.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
from tests.support.fake_claude_factory import make_fake_claude

from bench.harness import machine_line, percentile, serve
from ccgate.runners.base import RunRequest
from ccgate.runners.cli_command import CliOptions, build_argv, build_env, user_message


async def _bounded(concurrency: int, total: int, one: object) -> list[float]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(total):
        queue.put_nowait(n)

    async def worker() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            started = time.perf_counter()
            await one(n)  # type: ignore[operator]
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def _direct_call(fake: Path, work: Path) -> Callable[[int], Awaitable[None]]:
    """One run of the fake CLI as a bare client of it would do it: spawn, prompt on stdin,
    read until the result line (the process then exits on its own, off the clock)."""
    options = CliOptions(executable=str(fake), base_env={"PATH": os.environ["PATH"]})

    async def one(n: int) -> None:
        request = RunRequest.from_text(f"ping {n}", "sonnet")
        run_dir = tempfile.mkdtemp(dir=work)
        proc = await asyncio.create_subprocess_exec(
            *build_argv(options, request),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=run_dir,
            env=build_env(options, run_dir),
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(user_message(request.content))
        proc.stdin.close()
        while b'"type":"result"' not in (line := await proc.stdout.readline()):
            assert line, "the fake CLI ended without a result"
        _exiting.add(asyncio.create_task(proc.wait()))

    return one


_exiting: set[asyncio.Task[int]] = set()


@contextlib.asynccontextmanager
async def _gateway(
    fake: Path, concurrency: int, work: Path
) -> AsyncIterator[Callable[[int], Awaitable[None]]]:
    """A real ccgate serve process running the same fake CLI, and a call of /api/v1/run."""
    with serve(
        work, fake, CCGATE_CONCURRENCY=str(concurrency), CCGATE_QUEUE_SIZE="10000"
    ) as served:
        async with httpx.AsyncClient(
            base_url=served.url,
            timeout=60,
            headers={"Authorization": f"Bearer {served.key}"},
            limits=httpx.Limits(max_connections=concurrency),
        ) as client:

            async def one(n: int) -> None:
                response = await client.post("/api/v1/run", json={"prompt": f"ping {n}"})
                assert response.status_code == 200, response.text

            yield one


async def measure(
    fake: Path, concurrency: int, total: int, work: Path
) -> tuple[list[float], list[float]]:
    """Latencies of both paths, taken in alternating blocks so machine drift hits both alike."""
    bare: list[float] = []
    gated: list[float] = []
    block = max(10, concurrency * 4)
    direct = _direct_call(fake, work)
    async with _gateway(fake, concurrency, work) as via_ccgate:
        await _bounded(concurrency, block, via_ccgate)  # warm-up
        await _bounded(concurrency, block, direct)
        while len(bare) < total:
            bare += await _bounded(concurrency, block, direct)
            gated += await _bounded(concurrency, block, via_ccgate)
    await asyncio.gather(*_exiting)
    return bare, gated


async def main() -> None:
    """Measure both paths at each concurrency and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ccgate-bench-") as tmp:
        work = Path(tmp)
        fake = make_fake_claude(work / "fake", "text", text="pong")
        print(machine_line())
        print(
            f"command: python -m bench.overhead --requests {args.requests} --concurrency "
            + " ".join(map(str, args.concurrency))
        )
        print()
        print(
            "| concurrency | direct p50 ms | direct p99 ms | ccgate p50 ms | ccgate p99 ms "
            "| overhead p50 ms | overhead p99 ms |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for concurrency in args.concurrency:
            bare, gated = await measure(fake, concurrency, args.requests, work)
            d50, d99 = statistics.median(bare), percentile(bare, 99)
            g50, g99 = statistics.median(gated), percentile(gated, 99)
            print(
                f"| {concurrency} | {d50:.1f} | {d99:.1f} | {g50:.1f} | {g99:.1f} "
                f"| {g50 - d50:.1f} | {g99 - d99:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main())
