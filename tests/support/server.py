"""The real `ccgate serve` as a subprocess, for end-to-end tests.

The server gets exactly the environment the test builds (never the runner's own), runs in
a scratch directory (so the default SQLite database lands there) and logs to a file there::

    with ServerProcess(env, tmp_path) as server:
        key = server.create_key("app")
        httpx.post(f"{server.url}/api/v1/run", ...)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx

__all__ = [
    "STOP_TIMEOUT_SECS",
    "ServerProcess",
    "ServerStartError",
    "base_path_without",
    "free_port",
    "processes_under",
    "run_ccgate",
]

START_TIMEOUT_SECS = 20.0
STOP_TIMEOUT_SECS = 15.0
_CLI_TIMEOUT_SECS = 30.0
_POLL_SECS = 0.05
_PORT_ATTEMPTS = 3


class ServerStartError(RuntimeError):
    """`ccgate serve` exited or never answered /health; the message holds its log."""


def run_ccgate(
    args: Sequence[str], *, env: Mapping[str, str], cwd: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m ccgate ARGS` with exactly `env`, in `cwd`; never raises on failure."""
    return subprocess.run(
        [sys.executable, "-m", "ccgate", *args],
        cwd=cwd,
        env=dict(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=_CLI_TIMEOUT_SECS,
        check=False,
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One `python -m ccgate serve` process on a free port, with its log captured to a file."""

    def __init__(
        self, env: Mapping[str, str], cwd: Path, *, start_timeout: float = START_TIMEOUT_SECS
    ) -> None:
        """Remember how to start the server; nothing runs until `start()`."""
        self.env = {"PYTHONUNBUFFERED": "1", **env}
        self.cwd = Path(cwd)
        self.start_timeout = start_timeout
        self.log_path = self.cwd / "server.log"
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed = False
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self) -> ServerProcess:
        """Start the server and wait for GET /health; raise ServerStartError with its log."""
        self.cwd.mkdir(parents=True, exist_ok=True)
        for attempt in range(_PORT_ATTEMPTS):
            self._spawn(free_port())
            try:
                self._wait_healthy()
                return self
            except ServerStartError:
                self.stop()
                # Another process may have taken the port between probe and bind: retry.
                if (
                    "address already in use" not in self.log_text().lower()
                    or attempt == _PORT_ATTEMPTS - 1
                ):
                    raise
        raise AssertionError("unreachable")

    def serve_args(self) -> list[str]:
        """Options added to ``ccgate serve --port N`` (none)."""
        return []

    def _spawn(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.killed = False
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ccgate", "serve", "--port", str(port), *self.serve_args()],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                code = self.proc.poll()
                if code is not None:
                    raise ServerStartError(
                        f"ccgate serve exited with {code} before it was "
                        f"healthy; its log:\n{self.log_text()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                time.sleep(_POLL_SECS)
        raise ServerStartError(
            f"ccgate serve did not answer GET /health within "
            f"{self.start_timeout:g} s; its log:\n{self.log_text()}"
        )

    def log_text(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `python -m ccgate ARGS` with the server's environment and directory."""
        return run_ccgate(args, env=self.env, cwd=self.cwd, stdin=stdin)

    def create_key(self, name: str) -> str:
        """Create an API key with `ccgate keys create NAME` and return its secret."""
        done = self.cli("keys", "create", name)
        if done.returncode != 0 or not done.stdout.strip():
            raise AssertionError(
                f"ccgate keys create {name} failed ({done.returncode}): {done.stderr}"
            )
        return done.stdout.strip().splitlines()[-1]

    def stop(self, timeout: float = STOP_TIMEOUT_SECS) -> int | None:
        """SIGTERM the server, SIGKILL it after `timeout` s; return its exit code."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.killed = True
                    proc.kill()
                    proc.wait()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
        return proc.returncode

    def __enter__(self) -> ServerProcess:
        """Start the server for a `with` block."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server at the end of a `with` block."""
        self.stop()


def fake_claude_env(
    root: Path, claude: Path, admin_token: str, **overrides: object
) -> dict[str, str]:
    """The environment of a `ccgate serve` for tests: SQLite, home and work directories under
    ``root`` (made here), the given (fake) claude and admin token; ``overrides`` win."""
    (root / "home").mkdir(parents=True, exist_ok=True)
    (root / "work").mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(root / "home"),
        "CCGATE_CLAUDE_PATH": str(claude),
        "CCGATE_DATABASE_URL": f"sqlite:///{root / 'ccgate.db'}",
        "CCGATE_WORK_DIR": str(root / "work"),
        "CCGATE_ADMIN_TOKEN": admin_token,
        "CCGATE_LOG_LEVEL": "info",
        **{key: str(value) for key, value in overrides.items()},
    }


def base_path_without(executable_name: str, path: str | None = None) -> str:
    """`path` (default: this process's PATH) minus every directory holding `executable_name`."""
    entries = (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep)
    return os.pathsep.join(
        entry for entry in entries if entry and not (Path(entry) / executable_name).exists()
    )


def _live(pid: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "pid (comm) STATE ...": comm may hold spaces and parentheses.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _environ_tmpdir(pid: str) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in raw.split(b"\0"):
        if item.startswith(b"TMPDIR="):
            return item[len(b"TMPDIR=") :].decode("utf-8", "replace")
    return None


def processes_under(work_dir: Path) -> list[int]:
    """Pids of live (non-zombie) processes whose cwd or TMPDIR lies under `work_dir`.

    ccgate starts every CLI run in its own directory below CCGATE_WORK_DIR and sets TMPDIR
    to it, so with a per-test work dir this finds exactly the runs a test's server started,
    even after their directory was deleted or the server died and they were reparented.
    """
    root = str(Path(work_dir).resolve()) + os.sep
    found = []
    for entry in Path("/proc").iterdir():
        pid = entry.name
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        tmpdir = _environ_tmpdir(pid) or ""
        if (cwd.startswith(root) or (tmpdir + os.sep).startswith(root)) and _live(pid):
            found.append(int(pid))
    return sorted(found)
