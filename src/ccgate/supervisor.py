"""``ccgate serve --workers N``: one listening socket, N server processes on it.

The parent binds the port once, then starts N ``ccgate serve`` worker processes that inherit
the socket; the kernel hands each new connection to whichever worker accepts it first. Each
worker is a full ccgate node (its own store connections, queue, limiter and breaker), so what
must be shared between them goes through PostgreSQL and Redis exactly as between several
nodes. The parent serves nothing: it restarts a worker that dies (backing off when one keeps
dying quickly), and on SIGTERM/SIGINT sends SIGTERM to every worker, waits for them to drain
and exits 0. Workers keep their metrics in a shared ``PROMETHEUS_MULTIPROC_DIR`` (a private
temporary directory unless the operator set one), so ``/metrics`` adds up all of them.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ccgate.config import Settings

# uvicorn's default listen backlog.
BACKLOG = 2048
# A worker that lived this long before it died is restarted at once; one that died sooner is
# restarted after a delay that doubles with each quick death, up to the cap.
STABLE_SECS = 10.0
FIRST_RESTART_DELAY_SECS = 0.5
MAX_RESTART_DELAY_SECS = 30.0
# Beyond CCGATE_SHUTDOWN_GRACE_SECS: time for a worker to close its connections and exit
# before it is killed.
EXIT_MARGIN_SECS = 15.0
_TICK_SECS = 1.0


def workers_problem(settings: Settings, workers: int) -> str | None:
    """Why ``workers`` processes cannot share this configuration, as one line; None if they can."""
    if workers <= 1:
        return None
    needs = []
    if not settings.database_url.startswith(("postgresql", "postgres://")):
        needs.append(
            "CCGATE_DATABASE_URL=postgresql://... (SQLite serves one node per database file)"
        )
    if not settings.redis_url:
        needs.append(
            "CCGATE_REDIS_URL (without Redis, rate limits and the circuit breaker would be "
            "kept per process, not exact)"
        )
    if not needs:
        return None
    return f"{workers} workers (--workers, CCGATE_WORKERS) need " + " and ".join(needs)


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on ``host``:``port`` as a single ccgate process binds them (asyncio's
    ``create_server``): every address the host resolves to, IPv6 sockets IPv6-only."""
    infos = socket.getaddrinfo(
        host or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE,
    )  # fmt: skip
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"error while attempting to bind on address {address!r}: {exc}"
                ) from None
            sock.listen(BACKLOG)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@dataclass
class _Worker:
    slot: int
    proc: subprocess.Popen[bytes]
    ready_fd: int | None
    started_at: float
    ready: bool = False


class Supervisor:
    """Runs ``workers`` copies of ``command`` on ``sockets`` until SIGTERM/SIGINT."""

    def __init__(
        self,
        *,
        workers: int,
        sockets: Sequence[socket.socket],
        command: Sequence[str],
        env: Mapping[str, str],
        grace_secs: float,
        log: Any,
        metrics_dir: str | None = None,
    ) -> None:
        self.workers = workers
        self.sockets = list(sockets)
        self.command = list(command)
        self.env = dict(env)
        self.grace_secs = grace_secs
        self.metrics_dir = metrics_dir
        self.log = log
        self._live: dict[int, _Worker] = {}
        self._restart_at: dict[int, float] = {}
        self._quick_deaths: dict[int, int] = {}
        self._signals: list[int] = []
        self._ever_ready = False

    def run(self) -> int:
        """Start the workers, keep them running, stop them on a signal; the exit code."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        previous_wakeup = signal.set_wakeup_fd(wake_w)
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        }
        try:
            return self._supervise(wake_r)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_wakeup)
            os.close(wake_r)
            os.close(wake_w)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGCHLD:
            self._signals.append(sig)

    def _supervise(self, wake_r: int) -> int:
        for slot in range(self.workers):
            self._spawn(slot)
        while not self._signals:
            now = time.monotonic()
            due = min(self._restart_at.values(), default=now + _TICK_SECS)
            self._wait(wake_r, max(0.0, min(due - now, _TICK_SECS)))
            if self._signals:
                break
            for worker in [w for w in self._live.values() if w.proc.poll() is not None]:
                if not self._ever_ready:
                    self.log.error(
                        "worker_failed_to_start",
                        worker=worker.slot,
                        pid=worker.proc.pid,
                        exit_code=worker.proc.returncode,
                    )
                    self._forget(worker)
                    self._stop_all()
                    return 1
                self._died(worker)
            now = time.monotonic()
            for slot, at in list(self._restart_at.items()):
                if at <= now:
                    del self._restart_at[slot]
                    self._spawn(slot)
        self._stop_all()
        return 0

    def _spawn(self, slot: int) -> None:
        ready_r, ready_w = os.pipe()
        fds = [s.fileno() for s in self.sockets]
        argv = [*self.command, "--worker-of", str(os.getpid()), "--ready-fd", str(ready_w)]
        for fd in fds:
            argv += ["--socket-fd", str(fd)]
        try:
            # Its own process group: a terminal's Ctrl-C reaches only the parent, which
            # passes the stop on (once as SIGTERM, a second time as SIGINT: stop now).
            proc = subprocess.Popen(argv, env=self.env, pass_fds=(*fds, ready_w), process_group=0)
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        self._live[slot] = _Worker(slot, proc, ready_r, time.monotonic())
        self.log.info("worker_started", worker=slot, pid=proc.pid)

    def _wait(self, wake_r: int, timeout: float) -> None:
        """Sleep until a signal (a child's exit included), a worker's ready byte, or timeout."""
        watched = [w.ready_fd for w in self._live.values() if w.ready_fd is not None]
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select([wake_r, *watched], [], [], timeout)
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
            for worker in list(self._live.values()):
                if worker.ready_fd is not None and worker.ready_fd in readable:
                    self._read_ready(worker)

    def _read_ready(self, worker: _Worker) -> None:
        assert worker.ready_fd is not None
        try:
            data = os.read(worker.ready_fd, 16)
        except OSError:
            data = b""
        os.close(worker.ready_fd)
        worker.ready_fd = None
        if data:
            worker.ready = self._ever_ready = True
            self.log.info("worker_ready", worker=worker.slot, pid=worker.proc.pid)

    def _forget(self, worker: _Worker) -> None:
        if worker.ready_fd is not None:
            os.close(worker.ready_fd)
            worker.ready_fd = None
        self._live.pop(worker.slot, None)
        if self.metrics_dir is not None:
            from prometheus_client import multiprocess

            # Its live gauges (runs in progress, SSE subscribers, ...) stop counting.
            multiprocess.mark_process_dead(worker.proc.pid, self.metrics_dir)  # type: ignore[no-untyped-call]

    def _died(self, worker: _Worker) -> None:
        self._forget(worker)
        lived = time.monotonic() - worker.started_at
        if lived >= STABLE_SECS:
            self._quick_deaths[worker.slot] = 0
            delay = 0.0
        else:
            quick = self._quick_deaths.get(worker.slot, 0) + 1
            self._quick_deaths[worker.slot] = quick
            delay = min(MAX_RESTART_DELAY_SECS, FIRST_RESTART_DELAY_SECS * 2 ** (quick - 1))
        self.log.warning(
            "worker_died",
            worker=worker.slot,
            pid=worker.proc.pid,
            exit_code=worker.proc.returncode,
            lived_secs=round(lived, 1),
            restart_in_secs=delay,
        )
        self._restart_at[worker.slot] = time.monotonic() + delay

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait for them to drain; SIGKILL any still there after the
        grace (a second signal to the parent asks the workers to stop at once)."""
        self._restart_at.clear()
        self.log.info("workers_stopping", workers=len(self._live))
        for worker in self._live.values():
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)
        seen = len(self._signals)
        deadline = time.monotonic() + self.grace_secs + EXIT_MARGIN_SECS
        while self._live and time.monotonic() < deadline:
            for worker in [w for w in self._live.values() if w.proc.poll() is not None]:
                self._forget(worker)
            if len(self._signals) > seen:
                seen = len(self._signals)
                for worker in self._live.values():
                    with contextlib.suppress(ProcessLookupError):
                        worker.proc.send_signal(signal.SIGINT)
            if self._live:
                with contextlib.suppress(InterruptedError):
                    select.select([], [], [], 0.05)
        for worker in list(self._live.values()):
            self.log.warning("worker_killed", worker=worker.slot, pid=worker.proc.pid)
            worker.proc.kill()
            worker.proc.wait()
            self._forget(worker)
        self.log.info("workers_stopped")


def serve_workers(
    settings: Settings,
    *,
    workers: int,
    host: str,
    port: int,
    command: Sequence[str],
    log: Any,
) -> int:
    """Bind ``host``:``port``, run ``workers`` worker processes (``command`` plus the worker
    options) until SIGTERM/SIGINT; the exit code."""
    try:
        sockets = bind_sockets(host, port)
    except OSError as exc:
        log.error("bind_failed", host=host, port=port, error=str(exc))
        return 3
    env = dict(os.environ)
    own_dir = None
    metrics_dir = settings.prometheus_multiproc_dir
    if metrics_dir is None:
        # Every worker's metrics in one place, so /metrics on any worker adds them all up.
        own_dir = metrics_dir = tempfile.mkdtemp(prefix="ccgate-metrics-")
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    log.info("listening", host=host, port=port, workers=workers)
    try:
        return Supervisor(
            workers=workers,
            sockets=sockets,
            command=command,
            env=env,
            grace_secs=settings.shutdown_grace_secs,
            log=log,
            metrics_dir=metrics_dir,
        ).run()
    finally:
        for sock in sockets:
            sock.close()
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
