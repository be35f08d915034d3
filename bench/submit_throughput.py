"""Submit throughput: how many ``POST /api/v1/jobs`` (202) one ccgate process accepts per
second on SQLite, at several connection counts. Run by hand:

    .venv/bin/python -m bench.submit_throughput --seconds 10 --connections 16 64 256

The CLI behind it is the project's fake in ``hang_silent`` mode with concurrency 1, so jobs
queue up and what is measured is accepting work (auth, validation, the capacity check and the
insert), not running it. Uses ``wrk`` when installed (apt-get install wrk), else an httpx
client in this process (which then competes with the server for the two cores). The server's
CPU per submit is read from /proc.

``--compare-src DIR`` runs a second gateway from another source tree (e.g. a checkout of the
previous commit's ``src``) in the same run, the two measured in alternating rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from tests.support.fake_claude_factory import make_fake_claude

from bench.harness import Served, machine_line, serve

_BODY = json.dumps({"prompt": "Name 3 colors"})


def cpu_secs(pid: int) -> float:
    """CPU time the process has run, user and system, in seconds (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_wrk(url: str, key: str, seconds: int, connections: int, work: Path) -> tuple[int, float]:
    """Requests wrk made and per second (all answers checked to be 202 by the script)."""
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
    assert "NON-202" not in out.stdout, out.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    total = re.search(r"(\d+) requests in", out.stdout)
    assert rate, out.stdout
    assert total, out.stdout
    return int(total.group(1)), float(rate.group(1))


async def with_httpx(url: str, key: str, seconds: int, connections: int) -> tuple[int, float]:
    """Requests made and per second by an httpx client with ``connections`` senders."""
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
        return done, done / (time.monotonic() - started)


def measure(served: Served, seconds: int, connections: int, work: Path) -> tuple[float, float]:
    """Submits per second and the server's CPU milliseconds per submit."""
    before = cpu_secs(served.pid)
    if shutil.which("wrk"):
        total, rate = with_wrk(served.url, served.key, seconds, connections, work)
    else:
        total, rate = asyncio.run(with_httpx(served.url, served.key, seconds, connections))
    return rate, (cpu_secs(served.pid) - before) * 1000 / max(1, total)


def main() -> None:
    """Measure and print submits per second at each connection count."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, nargs="+", default=[64])
    parser.add_argument(
        "--compare-src", help="a second gateway's source tree (its src/), run side by side"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ccgate-bench-") as tmp:
        work = Path(tmp)
        fake = make_fake_claude(work / "fake", "hang_silent")
        print(machine_line())
        print(
            f"command: python -m bench.submit_throughput --seconds {args.seconds} --connections "
            + " ".join(map(str, args.connections))
            + (f" --compare-src {args.compare_src}" if args.compare_src else "")
        )
        print(f"client: {'wrk -t2' if shutil.which('wrk') else 'httpx'}")
        print()
        print("| gateway | connections | submits/s | ccgate CPU ms/submit |")
        print("| --- | --- | --- | --- |")
        env = {
            "CCGATE_CONCURRENCY": "1",
            "CCGATE_QUEUE_SIZE": "10000000",
            "CCGATE_JOB_TIMEOUT_SECS": "86400",
            "CCGATE_IDLE_TIMEOUT_SECS": "0",
        }
        for connections in args.connections:
            # A fresh server (and database) for each count: the queue grows as it runs.
            with ExitStack() as stack:
                gateways = [("this tree", stack.enter_context(serve(work, fake, **env)))]
                if args.compare_src:
                    other = serve(work, fake, **env, PYTHONPATH=args.compare_src)
                    gateways.append(("--compare-src", stack.enter_context(other)))
                for label, served in gateways:
                    rate, cpu_ms = measure(served, args.seconds, connections, work)
                    print(f"| {label} | {connections} | {rate:,.0f} | {cpu_ms:.2f} |", flush=True)


if __name__ == "__main__":
    main()
