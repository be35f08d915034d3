"""Gateway overhead of the API backend: ``POST /v1/messages`` through a real ``ccgate serve``
(CCGATE_BACKEND=api) versus the same request sent straight to the upstream it forwards to.

Run by hand (not part of the test suite):

    .venv/bin/python -m bench.api_overhead --requests 3000 --concurrency 1 10 50

The upstream runs in a process of its own and answers "hi" at once: by default
bench/fast_upstream.py (canned bytes from an asyncio protocol, ~0.05 ms per call, so the
baseline leaves the gateway most of the machine), with ``--upstream fake`` the project's
fake Anthropic API (tests/support/fake_anthropic.py, threaded ``http.server``). Both paths
send byte-identical requests (only the key differs: the fake's own key direct, a ccgate key
through ccgate) over one HTTP/1.1 keep-alive connection per concurrent caller (opened anew,
off the clock, for every block), non-streaming and streaming; a request is timed to its last
byte, and to its first body byte (for a stream: the first SSE bytes). The paths run in
alternating blocks so machine drift hits both alike; overhead is ccgate minus direct at the
same percentile. ``--baseline SRC`` serves a second ccgate from another source tree (an
older checkout's ``src``) in the same run.

The stock fake leaves Nagle's algorithm on and writes headers and body (or each SSE event)
separately, so every answer waits ~40 ms for a delayed ACK; this benchmark switches Nagle off
in its own copy of the fake (``--stock-fake`` keeps it) so the baseline is sub-millisecond.
The default client is a minimal asyncio HTTP/1.1 client (``--client raw``): httpx costs about
as much CPU per request as the gateway itself (2-3 ms at concurrency 50, its connection pool),
and on two shared cores that would swamp the difference being measured (``--client httpx`` to
compare).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tests.support import fake_anthropic

from bench.harness import free_port, machine_line, percentile, serve

# A call returns when its first body byte arrived (perf_counter), or None if it cannot tell.
Call = Callable[[], Awaitable[float | None]]
Callers = Callable[[], contextlib.AbstractAsyncContextManager[list[Call]]]
MODEL = "claude-sonnet-4-5"
_REPO = Path(__file__).resolve().parents[1]


# -- the upstream -------------------------------------------------------------------------


class _QuietFake(fake_anthropic.FakeAnthropic):
    """The fake without its request log, which would grow by every request of the run."""

    def _record(self, request: fake_anthropic.RecordedRequest) -> None:
        pass


def _serve_fake(port: int, *, stock: bool, text: str) -> None:
    """Run the fake upstream in the foreground until SIGTERM (the ``--fake-upstream`` mode)."""
    if not stock:
        # BaseHTTPRequestHandler's default; with it on, each answer waits for a delayed ACK.
        fake_anthropic._Handler.disable_nagle_algorithm = True
    # socketserver's listen backlog of 5 overflows when 50 callers connect at once.
    fake_anthropic._Server.request_queue_size = 256
    fake = _QuietFake("127.0.0.1", port)
    fake.default = fake_anthropic.Text(text)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with fake:
        while not done.wait(0.5):
            pass


@contextlib.contextmanager
def fake_upstream(*, kind: str, stock: bool, text: str) -> Iterator[str]:
    """The upstream in its own process (its own GIL); yields its URL. ``kind`` ``fast`` is
    bench/fast_upstream.py (canned bytes), ``fake`` the test suite's fake."""
    port = free_port()
    if kind == "fast":
        argv = [sys.executable, "-m", "bench.fast_upstream", "--port", str(port), "--text", text]
    else:
        argv = [
            sys.executable,
            "-m",
            "bench.api_overhead",
            "--fake-upstream",
            str(port),
            "--text",
            text,
            *(["--stock-fake"] if stock else []),
        ]
    proc = subprocess.Popen(argv, cwd=_REPO, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the fake upstream did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- clients ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a path sends its requests, and the key it sends."""

    url: str
    key: str

    def request(self, body: bytes) -> bytes:
        """The raw HTTP/1.1 request an Anthropic SDK would send for ``body``."""
        host = self.url.removeprefix("http://")
        return (
            f"POST /v1/messages HTTP/1.1\r\nhost: {host}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"x-api-key: {self.key}\r\nanthropic-version: 2023-06-01\r\n"
            "accept: application/json\r\n\r\n"
        ).encode() + body


class RawConnection:
    """One keep-alive HTTP/1.1 connection: writes a prebuilt request, reads to the last byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, url: str) -> RawConnection:
        """Connect to ``url``'s host and port."""
        host, _, port = url.removeprefix("http://").partition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer)

    async def call(self, request: bytes, streamed: bool) -> float:
        """Send ``request``; return once the whole answer (a 200, SSE when ``streamed``, JSON
        otherwise) has arrived, with the time its first body byte did."""
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        if head[9:12] != b"200":
            detail = (await self._reader.read(2000)).decode(errors="replace")
            raise RuntimeError(f"HTTP {head[9:12].decode()}: {detail}")
        lower = head.lower()
        if (b"content-type: text/event-stream" in lower) != streamed:
            raise RuntimeError(f"expected {'an SSE' if streamed else 'a JSON'} answer: {head!r}")
        first: float | None = None
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self._reader.readexactly(size + 2)
                first = first or time.perf_counter()
                if size == 0:
                    return first
        start = lower.index(b"content-length:") + len(b"content-length:")
        await self._reader.readexactly(int(lower[start : lower.index(b"\r\n", start)]))
        return time.perf_counter()

    async def close(self) -> None:
        """Close the connection."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


@contextlib.asynccontextmanager
async def raw_callers(target: Target, body: bytes, concurrency: int) -> AsyncIterator[list[Call]]:
    """One caller per concurrent worker, each on its own raw connection."""
    request = target.request(body)
    streamed = bool(json.loads(body).get("stream"))
    connections = [await RawConnection.open(target.url) for _ in range(concurrency)]
    try:
        yield [functools.partial(c.call, request, streamed) for c in connections]
    finally:
        for connection in connections:
            await connection.close()


@contextlib.asynccontextmanager
async def httpx_callers(target: Target, body: bytes, concurrency: int) -> AsyncIterator[list[Call]]:
    """The same calls made with an httpx.AsyncClient holding ``concurrency`` connections."""
    headers = {
        "x-api-key": target.key,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=target.url, headers=headers, limits=limits, timeout=60
    ) as client:

        async def one() -> float | None:
            first = None
            async with client.stream("POST", "/v1/messages", content=body) as response:
                async for _ in response.aiter_raw():
                    first = first or time.perf_counter()
                if response.status_code != 200:
                    raise RuntimeError(f"HTTP {response.status_code}")
            return first

        yield [one] * concurrency


# -- measuring ----------------------------------------------------------------------------


@dataclass
class Sample:
    """What one path gave over all its blocks."""

    latencies: list[float] = field(default_factory=list)
    first_bytes: list[float] = field(default_factory=list)  # time to the first body byte, ms
    seconds: float = 0.0
    cpu_secs: float = 0.0  # of the ccgate process
    client_cpu_secs: float = 0.0  # of this process, the load generator

    @property
    def rps(self) -> float:
        """Requests per second over the time its blocks ran."""
        return len(self.latencies) / self.seconds if self.seconds else 0.0


async def run_block(callers: Callers, total: int, into: Sample, pid: int | None) -> None:
    """``total`` calls spread over fresh ``callers`` (all busy at once); latencies in ms.

    Each block connects anew, off the clock (one untimed call per caller): a connection left
    idle through the other path's block could meet uvicorn's 5 s keep-alive timeout.
    """
    async with callers() as calls:
        await asyncio.gather(*(call() for call in calls))
        await _timed_block(calls, total, into, pid)


async def _timed_block(callers: list[Call], total: int, into: Sample, pid: int | None) -> None:
    remaining = total
    cpu_before = cpu_secs(pid) if pid else 0.0
    client_before = time.process_time()

    async def worker(call: Call) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            first = await call()
            into.latencies.append((time.perf_counter() - started) * 1000)
            if first is not None:
                into.first_bytes.append((first - started) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(worker(call) for call in callers))
    into.seconds += time.perf_counter() - began
    into.client_cpu_secs += time.process_time() - client_before
    if pid:
        into.cpu_secs += cpu_secs(pid) - cpu_before


def cpu_secs(pid: int) -> float:
    """CPU time all threads of a process have run, in seconds (the scheduler's nanosecond
    count; /proc/PID/stat only has clock ticks)."""
    return (
        sum(
            int((task / "schedstat").read_text().split()[0])
            for task in Path(f"/proc/{pid}/task").iterdir()
        )
        / 1e9
    )


def body_of(stream: bool, prompt_bytes: int) -> bytes:
    """A small Messages request: one user turn of ``prompt_bytes`` characters."""
    text = ("ping " * (prompt_bytes // 5 + 1))[:prompt_bytes]
    return json.dumps(
        {
            "model": MODEL,
            "max_tokens": 256,
            "stream": stream,
            "messages": [{"role": "user", "content": text}],
        }
    ).encode()


async def measure(
    direct: Target,
    gated: list[tuple[Target, int]],
    *,
    stream: bool,
    concurrency: int,
    total: int,
    args: argparse.Namespace,
) -> tuple[Sample, list[Sample]]:
    """The direct path and every ccgate at one concurrency, in alternating blocks after a
    warm-up of each."""
    body = body_of(stream, args.prompt_bytes)
    bare, throughs = Sample(), [Sample() for _ in gated]
    block = max(100, concurrency * 20)

    make = httpx_callers if args.client == "httpx" else raw_callers
    to_fake = functools.partial(make, direct, body, concurrency)
    to_ccgate = [functools.partial(make, target, body, concurrency) for target, _ in gated]
    for callers in (*to_ccgate, to_fake):  # warm-up
        await run_block(callers, block, Sample(), None)
    while len(bare.latencies) < total:
        await run_block(to_fake, block, bare, None)
        for callers, (_, pid), through in zip(to_ccgate, gated, throughs, strict=True):
            await run_block(callers, block, through, pid)
    return bare, throughs


def _row(mode: str, concurrency: int, name: str, bare: Sample, through: Sample) -> str:
    d50, d99 = percentile(bare.latencies, 50), percentile(bare.latencies, 99)
    g50, g99 = percentile(through.latencies, 50), percentile(through.latencies, 99)
    cpu_ms = _per_request(through.cpu_secs, through)
    first = (
        f"{percentile(through.first_bytes, 50) - percentile(bare.first_bytes, 50):.2f}"
        if through.first_bytes and bare.first_bytes
        else "-"
    )
    return (
        f"| {mode} | {concurrency} | {name} | {d50:.2f} | {d99:.2f} | {g50:.2f} | {g99:.2f} "
        f"| {g50 - d50:.2f} | {g99 - d99:.2f} | {first} | {bare.rps:,.0f} | {through.rps:,.0f} "
        f"| {through.rps / bare.rps:.2f} | {cpu_ms} |"
    )


def _per_request(secs: float, sample: Sample) -> str:
    return f"{secs * 1000 / len(sample.latencies):.2f}"


async def run(args: argparse.Namespace) -> None:
    """Start the upstream and ccgate (and a baseline ccgate), measure every mode and
    concurrency, print a table."""
    print(machine_line())
    print("command: python -m bench.api_overhead " + " ".join(sys.argv[1:]))
    fake = "stock, Nagle on" if args.stock_fake else "TCP_NODELAY"
    upstream_name = "bench/fast_upstream.py" if args.upstream == "fast" else f"fake ({fake})"
    print(
        f"client: {args.client}; upstream: {upstream_name}; "
        f"ccgate log level: {args.log_level}; prompt: {args.prompt_bytes} bytes"
    )
    print()
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(
            fake_upstream(kind=args.upstream, stock=args.stock_fake, text=args.text)
        )
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ccgate-bench-")))
        env = {
            "CCGATE_BACKEND": "api",
            "ANTHROPIC_BASE_URL": upstream,
            "ANTHROPIC_API_KEY": fake_anthropic.FAKE_API_KEY,
            "CCGATE_LOG_LEVEL": args.log_level,
        }
        servers = [("ccgate", stack.enter_context(serve(tmp, tmp / "no-claude", **env)))]
        if args.baseline:
            # The same server from another source tree (an older checkout), side by side.
            base = tmp / "baseline"
            base.mkdir()
            baseline = serve(base, base / "no-claude", PYTHONPATH=args.baseline, **env)
            servers.append(("baseline", stack.enter_context(baseline)))
        direct = Target(upstream, fake_anthropic.FAKE_API_KEY)
        gated = [(Target(served.url, served.key), served.pid) for _, served in servers]
        print(
            "| mode | concurrency | server | direct p50 ms | direct p99 ms | ccgate p50 ms "
            "| ccgate p99 ms | overhead p50 ms | overhead p99 ms | first byte overhead p50 ms "
            "| direct req/s | ccgate req/s | ratio | ccgate CPU ms/req |"
        )
        print("| --- " * 14 + "|")
        notes: list[str] = []
        for concurrency in args.concurrency:
            for stream in (False, True):
                bare, throughs = await measure(
                    direct,
                    gated,
                    stream=stream,
                    concurrency=concurrency,
                    total=args.requests,
                    args=args,
                )
                mode = "stream" if stream else "json"
                for (name, _), through in zip(servers, throughs, strict=True):
                    print(_row(mode, concurrency, name, bare, through), flush=True)
                notes.append(
                    f"{mode} at {concurrency}: {_per_request(bare.client_cpu_secs, bare)}"
                    f" direct, {_per_request(throughs[0].client_cpu_secs, throughs[0])} "
                    "through ccgate"
                )
        print()
        print(f"CPU of the {args.client} client per request, ms: " + "; ".join(notes))


def main() -> None:
    """Parse the command line; run the benchmark, or the fake upstream for it."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=3000,
        help="measured requests per path, mode and concurrency",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw")
    parser.add_argument("--prompt-bytes", type=int, default=1000)
    parser.add_argument("--text", default="hi", help="the fake's reply text")
    parser.add_argument("--log-level", default="info", help="ccgate's CCGATE_LOG_LEVEL")
    parser.add_argument(
        "--upstream",
        choices=("fast", "fake"),
        default="fast",
        help="fast: bench/fast_upstream.py (canned answers); fake: the test suite's fake",
    )
    parser.add_argument(
        "--baseline",
        metavar="SRC",
        help="also serve ccgate from this source tree (the directory holding ccgate/, e.g. "
        "an older checkout's src) and measure it side by side",
    )
    parser.add_argument(
        "--stock-fake",
        action="store_true",
        help="leave Nagle's algorithm on in the fake, as the test suite has it",
    )
    parser.add_argument("--fake-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake_upstream:
        _serve_fake(args.fake_upstream, stock=args.stock_fake, text=args.text)
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
