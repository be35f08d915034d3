"""Submit throughput: how many ``POST /api/v1/jobs`` (202) one ccgate process accepts per
second on SQLite. Run by hand:

    .venv/bin/python -m bench.submit_throughput --seconds 10 --connections 64

The CLI behind it is the project's fake in ``hang_silent`` mode with concurrency 1, so jobs
queue up and what is measured is accepting work (auth, validation, the capacity check and the
insert), not running it. Uses ``wrk`` when installed (apt-get install wrk), else an httpx
client in this process (which then competes with the server for the two cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from tests.support.fake_claude_factory import make_fake_claude

from bench.harness import machine_line, serve

_BODY = json.dumps({"prompt": "Name 3 colors"})


def with_wrk(url: str, key: str, seconds: int, connections: int, work: Path) -> float:
    """Requests per second wrk measured (all answers checked to be 202 by the script)."""
    script = work / "submit.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(_BODY)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        "local bad = 0\n"
        "function response(status) if status ~= 202 then bad = bad + 1 end end\n"
        "function done() if bad > 0 then io.write('NON-202: ' .. bad .. '\\n') end end\n"
    )
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "-s",
            str(script),
            f"{url}/api/v1/jobs",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    print(out.stdout)
    match = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    assert match, out.stdout
    return float(match.group(1))


async def with_httpx(url: str, key: str, seconds: int, connections: int) -> float:
    """Requests per second from an httpx client with ``connections`` concurrent senders."""
    done = 0
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {key}"},
        limits=httpx.Limits(max_connections=connections),
    ) as client:

        async def sender() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                response = await client.post("/api/v1/jobs", content=_BODY)
                assert response.status_code == 202, response.text
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(sender() for _ in range(connections)))
        return done / (time.monotonic() - started)


def main() -> None:
    """Measure and print submits per second."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ccgate-bench-") as tmp:
        work = Path(tmp)
        fake = make_fake_claude(work / "fake", "hang_silent")
        print(machine_line())
        print(
            f"command: python -m bench.submit_throughput --seconds {args.seconds} "
            f"--connections {args.connections}"
        )
        with serve(
            work,
            fake,
            CCGATE_CONCURRENCY="1",
            CCGATE_QUEUE_SIZE="10000000",
            CCGATE_JOB_TIMEOUT_SECS="86400",
            CCGATE_IDLE_TIMEOUT_SECS="0",
        ) as served:
            if shutil.which("wrk"):
                rate = with_wrk(served.url, served.key, args.seconds, args.connections, work)
                tool = "wrk"
            else:
                rate = asyncio.run(
                    with_httpx(served.url, served.key, args.seconds, args.connections)
                )
                tool = "httpx"
        print(f"submits/s ({tool}, {args.connections} connections): {rate:.0f}")


if __name__ == "__main__":
    main()
