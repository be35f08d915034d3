"""Gateway overhead of the CLI path: /api/v1/run through ccgate versus the same fake CLI run
directly, p50 and p99 at several concurrencies, with ccgate's CPU per request.

Run by hand (not part of the test suite):

    .venv/bin/python -m bench.overhead --requests 400 --concurrency 1 16

Both sides run the project's fast fake ``claude`` (tests/support/fake_claude.py) with the same
argv ccgate builds, so the difference is what ccgate adds: HTTP, auth, the queue round trip
through the store, the audit row, and process management. Each side is timed until the
CLI's result line has been handled (direct: read; ccgate: the whole HTTP answer received).

The client is a minimal asyncio HTTP/1.1 client (one keep-alive connection per concurrent
caller, prebuilt request bytes): httpx costs about a millisecond of CPU per request on these
two shared cores, which would count against ccgate (``--client httpx`` to compare).

``--compare-src DIR`` runs a second gateway from another source tree (e.g. a checkout of the
previous commit's ``src``) in the same run, in alternating blocks: a before/after comparison
that machine drift hits alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tests.support.fake_claude_factory import make_fake_claude

from bench.harness import machine_line, percentile, serve
from ccgate.runners.base import RunRequest
from ccgate.runners.cli_command import CliOptions, build_argv, build_env, user_message
from ccgate.runners.process import watch_exits_with_pidfd

Call = Callable[[int], Awaitable[None]]


@dataclass
class Sample:
    """What one path gave over all its blocks."""

    latencies: list[float] = field(default_factory=list)
    cpu_secs: float = 0.0  # of the ccgate process (its children, the CLIs, not included)


def cpu_secs(pid: int) -> float:
    """CPU time the process has run, user and system, in seconds: from /proc/PID/stat, which
    also counts threads that have ended (asyncio starts one per child it waits for)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _bounded(concurrency: int, total: int, one: Call) -> list[float]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(total):
        queue.put_nowait(n)

    async def worker() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            started = time.perf_counter()
            await one(n)
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def _direct_call(fake: Path, work: Path) -> Call:
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


class RawCaller:
    """One keep-alive HTTP/1.1 connection posting a run and reading its whole answer."""

    def __init__(self, url: str, key: str) -> None:
        self.host, _, port = url.removeprefix("http://").partition(":")
        self.port = int(port)
        self.key = key
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def call(self, n: int) -> None:
        """POST /api/v1/run; return once the whole 200 answer has arrived."""
        if self._conn is None:
            self._conn = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._conn
        body = json.dumps({"prompt": f"ping {n}"}).encode()
        writer.write(
            (
                f"POST /api/v1/run HTTP/1.1\r\nhost: {self.host}\r\n"
                f"authorization: Bearer {self.key}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        head = await reader.readuntil(b"\r\n\r\n")
        lower = head.lower()
        start = lower.index(b"content-length:") + len(b"content-length:")
        answer = await reader.readexactly(int(lower[start : lower.index(b"\r\n", start)]))
        assert head[9:12] == b"200", answer

    async def close(self) -> None:
        """Close the connection (a new one opens at the next call)."""
        if self._conn is not None:
            self._conn[1].close()
            with contextlib.suppress(OSError):
                await self._conn[1].wait_closed()
            self._conn = None


@contextlib.asynccontextmanager
async def _gateway(
    fake: Path, concurrency: int, work: Path, client: str, src: str | None
) -> AsyncIterator[tuple[Callable[[], Awaitable[Call]], int]]:
    """A real ccgate serve process running the same fake CLI (from ``src`` when given):
    yields a factory of callers (fresh connections for each block) and its pid."""
    env = {"CCGATE_CONCURRENCY": str(concurrency), "CCGATE_QUEUE_SIZE": "10000"}
    if src is not None:
        env["PYTHONPATH"] = src
    with serve(work, fake, **env) as served:
        if client == "httpx":
            async with httpx.AsyncClient(
                base_url=served.url,
                timeout=60,
                headers={"Authorization": f"Bearer {served.key}"},
                limits=httpx.Limits(max_connections=concurrency),
            ) as http:

                async def one(n: int) -> None:
                    response = await http.post("/api/v1/run", json={"prompt": f"ping {n}"})
                    assert response.status_code == 200, response.text

                async def same() -> Call:
                    return one

                yield same, served.pid
            return
        callers: list[RawCaller] = []

        async def fresh() -> Call:
            # A pool of connections, one per concurrent worker, reconnected for each block
            # (uvicorn closes a connection idle for 5 s while the other path runs).
            for caller in callers:
                await caller.close()
            callers[:] = [RawCaller(served.url, served.key) for _ in range(concurrency)]
            free: asyncio.Queue[RawCaller] = asyncio.Queue()
            for caller in callers:
                free.put_nowait(caller)

            async def one(n: int) -> None:
                caller = await free.get()
                try:
                    await caller.call(n)
                finally:
                    free.put_nowait(caller)

            return one

        try:
            yield fresh, served.pid
        finally:
            for caller in callers:
                await caller.close()


async def _timed(concurrency: int, total: int, one: Call, pid: int, into: Sample) -> None:
    before = cpu_secs(pid)
    into.latencies += await _bounded(concurrency, total, one)
    into.cpu_secs += cpu_secs(pid) - before


async def measure(
    fake: Path, concurrency: int, total: int, work: Path, client: str, compare: str | None
) -> tuple[list[float], Sample, Sample | None]:
    """Latencies of every path, taken in alternating blocks so machine drift hits all alike."""
    bare: list[float] = []
    gated, other = Sample(), Sample()
    block = max(10, concurrency * 4)
    # The direct path spawns the way the gateway does (a pidfd per child on 3.11, not a thread).
    watch_exits_with_pidfd()
    direct = _direct_call(fake, work)
    async with contextlib.AsyncExitStack() as stack:
        new_calls, pid = await stack.enter_async_context(
            _gateway(fake, concurrency, work, client, None)
        )
        old: tuple[Callable[[], Awaitable[Call]], int] | None = None
        if compare is not None:
            old = await stack.enter_async_context(
                _gateway(fake, concurrency, work, client, compare)
            )
        await _bounded(concurrency, block, await new_calls())  # warm-up
        if old is not None:
            await _bounded(concurrency, block, await old[0]())
        await _bounded(concurrency, block, direct)
        while len(bare) < total:
            bare += await _bounded(concurrency, block, direct)
            await _timed(concurrency, block, await new_calls(), pid, gated)
            if old is not None:
                await _timed(concurrency, block, await old[0](), old[1], other)
    await asyncio.gather(*_exiting)
    return bare, gated, other if compare is not None else None


def _row(label: str, concurrency: int, bare: list[float], sample: Sample) -> str:
    d50, d99 = statistics.median(bare), percentile(bare, 99)
    g50, g99 = statistics.median(sample.latencies), percentile(sample.latencies, 99)
    cpu_ms = sample.cpu_secs * 1000 / len(sample.latencies)
    return (
        f"| {label} | {concurrency} | {d50:.1f} | {d99:.1f} | {g50:.1f} | {g99:.1f} "
        f"| {g50 - d50:.1f} | {g99 - d99:.1f} | {g50 / d50:.2f} | {cpu_ms:.2f} |"
    )


async def main() -> None:
    """Measure every path at each concurrency and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    parser.add_argument(
        "--compare-src", help="a second gateway's source tree (its src/), run side by side"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ccgate-bench-") as tmp:
        work = Path(tmp)
        fake = make_fake_claude(work / "fake", "text", text="pong")
        print(machine_line())
        print(
            f"command: python -m bench.overhead --requests {args.requests} --concurrency "
            + " ".join(map(str, args.concurrency))
            + f" --client {args.client}"
            + (f" --compare-src {args.compare_src}" if args.compare_src else "")
        )
        print()
        print(
            "| gateway | concurrency | direct p50 ms | direct p99 ms | ccgate p50 ms "
            "| ccgate p99 ms | overhead p50 ms | overhead p99 ms | p50 ratio "
            "| ccgate CPU ms/req |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for concurrency in args.concurrency:
            bare, gated, other = await measure(
                fake, concurrency, args.requests, work, args.client, args.compare_src
            )
            print(_row("this tree", concurrency, bare, gated), flush=True)
            if other is not None:
                print(_row("--compare-src", concurrency, bare, other), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
