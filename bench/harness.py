"""Shared pieces of the benchmarks: a ccgate serve process on a fake CLI, and percentiles."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident memory of a process, in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Served:
    """A running ccgate serve process and a key for it."""

    url: str
    key: str
    pid: int


@contextlib.contextmanager
def serve(work: Path, fake_cli: Path, **env: str) -> Iterator[Served]:
    """Run ``ccgate serve`` on ``fake_cli`` with a fresh SQLite database in ``work``."""
    port = free_port()
    full_env = {
        "PATH": os.environ["PATH"],
        "HOME": str(work),
        "CCGATE_CLAUDE_PATH": str(fake_cli),
        "CCGATE_DATABASE_URL": f"sqlite:///{work / f'bench-{port}.db'}",
        "CCGATE_WORK_DIR": str(work),
        "CCGATE_LOG_LEVEL": "warning",
        **env,
    }
    key = subprocess.run(
        [sys.executable, "-m", "ccgate", "keys", "create", "bench"],
        env=full_env,
        capture_output=True,
        text=True,
        check=True,
        cwd=work,
    ).stdout.strip()
    server = subprocess.Popen(
        [sys.executable, "-m", "ccgate", "serve", "--port", str(port)],
        env=full_env,
        cwd=work,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield Served(url, key, server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def machine_line() -> str:
    """One line naming the machine the numbers come from."""
    import platform

    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )
