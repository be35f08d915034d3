"""Idle SSE streams held by one ccgate process: how many, and the memory each costs.

    .venv/bin/python -m bench.sse_streams --streams 5000

One job hangs (the project's fake CLI in ``hang_silent`` mode), and N raw connections
subscribe to its ``/sse`` stream. The server's resident memory is read from /proc before and
after all streams are open and have received their first line; the difference divided by N is
the cost of one idle stream.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
from tests.support.fake_claude_factory import make_fake_claude

from bench.harness import machine_line, rss_kib, serve


async def open_streams(
    url: str, key: str, job_id: str, count: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Open ``count`` SSE connections and wait for each one's first line."""
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"GET /api/v1/jobs/{job_id}/sse HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    streams = []
    batch = 200
    for start in range(0, count, batch):

        async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(request)
            await writer.drain()
            status = await reader.readline()
            assert b" 200 " in status, status
            while (await reader.readline()).strip():
                pass  # headers
            await reader.readline()  # the chunk size line of the first comment
            return reader, writer

        streams += await asyncio.gather(*(one() for _ in range(min(batch, count - start))))
    return streams


async def measure(url: str, key: str, pid: int, count: int) -> None:
    """Submit a hanging job, open the streams, print the memory they cost."""
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
        job_id = (await c.post("/api/v1/jobs", json={"prompt": "hang"})).json()["job_id"]
        await c.get(f"/api/v1/jobs/{job_id}")
    await asyncio.sleep(1)
    before = rss_kib(pid)
    started = time.monotonic()
    streams = await open_streams(url, key, job_id, count)
    opened = time.monotonic() - started
    await asyncio.sleep(2)
    after = rss_kib(pid)
    print(f"streams open: {len(streams)} (in {opened:.1f} s)")
    print(f"server RSS: {before} KiB before, {after} KiB after")
    print(f"memory per idle stream: {(after - before) / count:.1f} KiB")
    for _, writer in streams:
        writer.close()


def main() -> None:
    """Run the measurement against a fresh server."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ccgate-bench-") as tmp:
        work = Path(tmp)
        fake = make_fake_claude(work / "fake", "hang_silent")
        print(machine_line())
        print(f"command: python -m bench.sse_streams --streams {args.streams}")
        with serve(
            work,
            fake,
            CCGATE_CONCURRENCY="1",
            CCGATE_IDLE_TIMEOUT_SECS="0",
            CCGATE_JOB_TIMEOUT_SECS="86400",
        ) as served:
            asyncio.run(measure(served.url, served.key, served.pid, args.streams))


if __name__ == "__main__":
    main()
