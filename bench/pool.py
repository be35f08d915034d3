"""Warm pool: cold vs fresh vs reuse with the real claude CLI against a fast fake upstream.

Run by hand (not part of the test suite):

    CCGATE_TEST_CLAUDE=/tmp/cli/node_modules/.bin/claude \\
        .venv/bin/python -m bench.pool --requests 40 --concurrency 1 4

Requests go through the runner (PooledCliRunner / ClaudeCliRunner) in this process, so
latency is the run itself, end to end from ``run()`` to the RunResult; the HTTP and queue
overhead on top is what bench/overhead.py measures. CPU is ``RUSAGE_CHILDREN`` over the whole
phase after every CLI process has exited, so warm-ups and refills that served nobody count too.
``fresh-paced`` waits for the pool to be warm (1.5 s between a worker's requests), the case
the pool is sized for; plain ``fresh`` runs back to back, where refills cannot keep up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import tempfile
import time
from pathlib import Path

from tests.support.fake_anthropic import FakeAnthropic, Text, cli_env
from tests.support.real_claude import find_real_claude

from bench.harness import machine_line, percentile
from ccgate.runners.base import Runner, RunRequest, collect
from ccgate.runners.cli import ClaudeCliRunner
from ccgate.runners.cli_command import CliOptions
from ccgate.runners.pool import PoolConfig
from ccgate.runners.pooled_cli import PooledCliRunner

_PACE_SECS = 1.5
_WARM_SECS = 2.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _runner(mode: str, options: CliOptions, concurrency: int) -> Runner:
    if mode == "cold":
        return ClaudeCliRunner(options)
    return PooledCliRunner(
        options,
        PoolConfig(
            mode=mode.removesuffix("-paced"),
            max_processes=2 * concurrency,
            min_idle=concurrency,
            concurrency=concurrency,
        ),
    )


async def _phase(
    mode: str, options: CliOptions, requests: int, concurrency: int
) -> dict[str, float]:
    runner = _runner(mode, options, concurrency)
    paced = mode.endswith("-paced")
    cpu_before = _children_cpu()
    latencies: list[float] = []
    try:
        if mode != "cold":  # the owner's first request is a miss that starts the warming
            await collect(runner, RunRequest.from_text("warm", "haiku", owner="bench"))
            await asyncio.sleep(_WARM_SECS)
        todo = iter(range(requests))

        async def worker() -> None:
            for n in todo:
                started = time.perf_counter()
                await collect(runner, RunRequest.from_text(f"q{n}", "haiku", owner="bench"))
                latencies.append(time.perf_counter() - started)
                if paced:
                    await asyncio.sleep(_PACE_SECS)

        wall = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - wall
        stats = runner.stats() if isinstance(runner, PooledCliRunner) else {}
    finally:
        await runner.aclose()
    cpu = _children_cpu() - cpu_before
    return {
        "p50": percentile(latencies, 50) * 1000,
        "p99": percentile(latencies, 99) * 1000,
        "rps": requests / wall,
        "cpu": cpu / requests,
        "hits": float(stats.get("hits", 0)),
        "misses": float(stats.get("misses", 0)),
    }


async def main() -> None:
    """Run every mode at every concurrency and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--modes", nargs="+", default=["cold", "fresh", "fresh-paced", "reuse"])
    args = parser.parse_args()
    claude = find_real_claude()
    if claude is None:
        raise SystemExit("set CCGATE_TEST_CLAUDE to the claude CLI")
    print(machine_line())
    print("| mode | concurrency | p50 ms | p99 ms | req/s | CLI CPU-s/req | pool hits/misses |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp, FakeAnthropic() as fake:
        fake.default = Text("ok")
        options = CliOptions(
            executable=str(claude),
            base_env=cli_env(fake, Path(tmp)),
            upstream_retries=0,
            work_dir=tmp,
        )
        for concurrency in args.concurrency:
            for mode in args.modes:
                row = await _phase(mode, options, args.requests, concurrency)
                pool = "—" if mode == "cold" else f"{row['hits']:.0f}/{row['misses']:.0f}"
                print(
                    f"| {mode} | {concurrency} | {row['p50']:.0f} | {row['p99']:.0f} | "
                    f"{row['rps']:.2f} | {row['cpu']:.3f} | {pool} |",
                    flush=True,
                )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
