"""The warm pool: pre-started CLI processes per (owner, argv), refilled in the background.

A pool key holds the system prompts as a SHA-256 only. The text a key needs to start more
processes is kept while the key is in demand, for a bounded number of keys (per owner and
overall): the least recently used key beyond either bound is forgotten and its idle processes
retired, and bookkeeping of a key with nothing idle, starting, resetting or busy is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from ccgate.runners.base import RunRequest
from ccgate.runners.cli_command import CliOptions, PromptFiles, build_argv
from ccgate.runners.run_dir import SystemPrompts
from ccgate.runners.warm_process import PoolKey, WarmProcess
from ccgate.turns import ContentBlock

log = structlog.get_logger("ccgate.pool")

APPROX_RSS_MIB = 200  # one idle claude 2.1.x process, measured; docs/pool.md
_RESET_TIMEOUT_SECS = 10.0
_JANITOR_INTERVAL_SECS = 1.0
_RESET_WAIT_SECS = 1.0


@dataclass(frozen=True)
class PoolConfig:
    """How the pool behaves; see docs/pool.md for what each knob bounds."""

    mode: str  # "fresh" or "reuse"
    max_processes: int = 4
    min_idle: int = 1
    idle_secs: float = 300.0
    max_requests: int = 50
    concurrency: int = 2
    janitor_interval_secs: float = _JANITOR_INTERVAL_SECS
    # Distinct pool keys remembered at once: past either bound the least recently used goes.
    max_keys: int = 64
    max_keys_per_owner: int = 8


@dataclass
class PoolCounters:
    """Monotonic counters for /metrics."""

    hits: int = 0
    misses: int = 0
    bypasses: int = 0
    spawns: int = 0
    spawn_failures: int = 0
    retirements: int = 0
    resets: int = 0
    reset_failures: int = 0
    interrupts: int = 0
    forgotten_keys: int = 0


@dataclass
class _Demand:
    """A key's last checkout and the system prompts its new processes are started with."""

    prompts: SystemPrompts
    last: float


class WarmPool:
    """Holds idle warm processes per PoolKey; never hands one to a different key."""

    def __init__(self, options: CliOptions, config: PoolConfig) -> None:
        self.options = options
        self.config = config
        self.counters = PoolCounters()
        self.active_runs = 0
        self._idle: dict[PoolKey, list[WarmProcess]] = {}
        self._busy: set[WarmProcess] = set()
        self._spawning: dict[PoolKey, int] = {}
        self._closing = 0
        self._resetting: dict[PoolKey, int] = {}
        self._returned = asyncio.Event()
        # Least recently checked out first.
        self._demand: OrderedDict[PoolKey, _Demand] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._janitor: asyncio.Task[None] | None = None
        self._closed = False

    def key_for(self, request: RunRequest) -> PoolKey | None:
        """The request's PoolKey, or None when the pool must not serve it (cold path)."""
        if self._closed or request.owner is None:
            return None
        if self.config.mode == "reuse" and _looks_like_command(request.content):
            # Reuse needs slash commands on (for /clear); user text that starts with "/"
            # would run as a command, so it takes the locked-down cold path instead.
            return None
        return PoolKey(
            request.owner, request.model, SystemPrompts.of(request).digest(), request.stream
        )

    def argv(self, key: PoolKey, prompt_files: PromptFiles) -> list[str]:
        """The argv a process for ``key`` runs: the cold runner's, minus what reuse needs."""
        template = RunRequest(content=[], model=key.model, stream=key.stream)
        argv = build_argv(self.options, template, prompt_files=prompt_files)
        if self.config.mode == "reuse":
            argv.remove("--disable-slash-commands")
        return argv

    async def checkout(self, key: PoolKey, prompts: SystemPrompts) -> WarmProcess | None:
        """Take a live idle process of ``key`` (oldest first), and ask for a replacement.

        ``prompts`` are the system prompts ``key`` hashes, for the processes started for it.
        When none is idle but one of ``key`` is being reset, wait for it: a /clear takes
        tens of milliseconds, a cold start most of a second.
        """
        self._note_demand(key, prompts)
        self._start_janitor()
        found = self._take_idle(key)
        deadline = time.monotonic() + _RESET_WAIT_SECS
        while found is None and self._resetting.get(key, 0) and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._returned.wait(), deadline - time.monotonic())
            found = self._take_idle(key)
        if found is not None:
            self._busy.add(found)
            self.counters.hits += 1
        else:
            self.counters.misses += 1
            # A miss is demand the pool did not meet: grow by one even past min idle.
            if self._may_spawn() and key in self._demand:
                self._start_spawn(key, self._demand[key].prompts)
        self.refill()
        return found

    def _note_demand(self, key: PoolKey, prompts: SystemPrompts) -> None:
        """Mark ``key`` most recently used; forget least recently used keys past the bounds."""
        demand = self._demand.pop(key, None) or _Demand(prompts, 0.0)
        demand.last = time.monotonic()
        self._demand[key] = demand
        owned = [k for k in self._demand if k.owner == key.owner]
        for old in owned[: max(0, len(owned) - self.config.max_keys_per_owner)]:
            self._forget(old)
        while len(self._demand) > self.config.max_keys:
            self._forget(next(iter(self._demand)))

    def _forget(self, key: PoolKey) -> None:
        """Drop ``key``'s demand and retire its idle processes; processes of it still starting,
        busy or resetting are retired when they come back (they are no longer reusable)."""
        del self._demand[key]
        self.counters.forgotten_keys += 1
        for process in list(self._idle.get(key, [])):
            self._retire(process)

    def _take_idle(self, key: PoolKey) -> WarmProcess | None:
        idle = self._idle.get(key, [])
        found = None
        while idle and found is None:
            candidate = idle.pop(0)
            if candidate.alive:
                found = candidate
            else:
                self._retire(candidate)
        if not idle:
            self._idle.pop(key, None)
        return found

    def tracked_keys(self) -> set[PoolKey]:
        """Every key the pool keeps any bookkeeping for (demand, idle, starting, resetting)."""
        return {*self._demand, *self._idle, *self._spawning, *self._resetting}

    @property
    def total(self) -> int:
        """Pooled processes that hold memory: idle, busy, starting and stopping."""
        return (
            sum(len(v) for v in self._idle.values())
            + len(self._busy)
            + sum(self._spawning.values())
            + self._closing
        )

    def refill(self) -> None:
        """Start processes for recently active keys below min idle, within every bound; drop
        the demand of keys idle past CCGATE_POOL_IDLE_SECS that have no process left."""
        now = time.monotonic()
        for key, demand in list(self._demand.items()):
            if now - demand.last > self.config.idle_secs:
                if not self._holds(key):
                    del self._demand[key]
                continue
            while self._may_spawn() and self._available(key) < self.config.min_idle:
                self._start_spawn(key, demand.prompts)

    def _holds(self, key: PoolKey) -> bool:
        """Whether any process of ``key`` is idle, starting, resetting or busy."""
        return (
            key in self._idle
            or key in self._spawning
            or key in self._resetting
            or any(p.key == key for p in self._busy)
        )

    def _may_spawn(self) -> bool:
        return (
            not self._closed
            and self.total < self.config.max_processes
            and self.active_runs + sum(self._spawning.values()) < self.config.concurrency
        )

    def _available(self, key: PoolKey) -> int:
        """Idle or starting processes of ``key``, plus (reuse) busy ones that will come back."""
        coming_back = sum(1 for p in self._busy if p.key == key and self._reusable(p))
        return len(self._idle.get(key, [])) + self._spawning.get(key, 0) + coming_back

    def _start_spawn(self, key: PoolKey, prompts: SystemPrompts) -> None:
        self._spawning[key] = self._spawning.get(key, 0) + 1
        self._background(self._spawn(key, prompts))

    def release(self, process: WarmProcess, outcome: str) -> None:
        """Take back a process after a run that ended ``done``, ``error`` or ``cancelled``."""
        if outcome == "cancelled":
            self._background(self._after_cancel(process))
        elif outcome == "done" and self._reusable(process):
            # Counted now, not when the task starts, so a checkout in this tick waits for it.
            self._resetting[process.key] = self._resetting.get(process.key, 0) + 1
            self._background(self._reset_and_return(process))
        else:
            self._retire(process)

    def stats(self) -> dict[str, Any]:
        """Counters plus the pool's current shape, for /metrics and logs."""
        return {
            "mode": self.config.mode,
            "idle": sum(len(v) for v in self._idle.values()),
            "busy": len(self._busy),
            "starting": sum(self._spawning.values()),
            "keys": len(self._demand),
            **asdict(self.counters),
        }

    def idle_processes(self) -> list[WarmProcess]:
        """The idle processes, for tests and diagnostics."""
        return [p for procs in self._idle.values() for p in procs]

    async def aclose(self) -> None:
        """Stop the janitor and every pooled process; wait until all have exited."""
        self._closed = True
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for process in [*self.idle_processes(), *self._busy]:
            self._retire(process)
        self._idle.clear()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _reusable(self, process: WarmProcess) -> bool:
        return (
            self.config.mode == "reuse"
            and not self._closed
            and process.alive
            and not process.tainted
            and process.served < self.config.max_requests
            and process.key in self._demand
        )

    async def _spawn(self, key: PoolKey, prompts: SystemPrompts) -> None:
        try:
            process = await WarmProcess.start(
                key, self.options, prompts, lambda files: self.argv(key, files)
            )
        except Exception as exc:
            # WarmProcess.start removed the directory it made; the request already ran cold.
            self.counters.spawn_failures += 1
            log.warning("pool_spawn_failed", error=type(exc).__name__)
            return
        finally:
            _decrement(self._spawning, key)
        self.counters.spawns += 1
        self._idle.setdefault(key, []).append(process)
        if self._closed or key not in self._demand:
            self._retire(process)

    async def _reset_and_return(self, process: WarmProcess) -> None:
        """Run /clear; back to idle if it verifiably worked. The caller counted it resetting."""
        key = process.key
        try:
            reset = await process.reset(_RESET_TIMEOUT_SECS)
        finally:
            _decrement(self._resetting, key)
        if reset and self._reusable(process):
            self.counters.resets += 1
            self._busy.discard(process)
            process.idle_since = time.monotonic()
            self._idle.setdefault(key, []).append(process)
        else:
            self.counters.reset_failures += 1
            self._retire(process, kill=True)
        # Wake checkouts waiting on a reset, whichever way it went.
        self._returned.set()
        self._returned = asyncio.Event()

    async def _after_cancel(self, process: WarmProcess) -> None:
        self.counters.interrupts += 1
        ended = (
            await process.interrupt()
            and await process.read_until_result(self.options.kill_grace_secs) is not None
        )
        if ended and self._reusable(process):
            self._resetting[process.key] = self._resetting.get(process.key, 0) + 1
            await self._reset_and_return(process)
        else:
            self._retire(process, kill=not ended)

    def _retire(self, process: WarmProcess, *, kill: bool = False) -> None:
        self._busy.discard(process)
        idle = self._idle.get(process.key, [])
        if process in idle:
            idle.remove(process)
            if not idle:
                del self._idle[process.key]
        self.counters.retirements += 1
        self._closing += 1
        self._background(self._close(process, kill))

    async def _close(self, process: WarmProcess, kill: bool) -> None:
        try:
            if kill:
                await process.process.stop(self.options.kill_grace_secs)
            await process.close(self.options.kill_grace_secs)
        finally:
            self._closing -= 1
            self.refill()

    def _start_janitor(self) -> None:
        if self._janitor is None and not self._closed:
            self._janitor = asyncio.create_task(self._janitor_loop(), name="ccgate-pool-janitor")

    async def _janitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.janitor_interval_secs)
            now = time.monotonic()
            for process in self.idle_processes():
                if not process.alive or now - process.idle_since > self.config.idle_secs:
                    self._retire(process)
            self.refill()

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _decrement(counts: dict[PoolKey, int], key: PoolKey) -> None:
    """One less for ``key``; the entry goes at zero, so forgotten keys leave nothing behind."""
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def _looks_like_command(content: Sequence[ContentBlock]) -> bool:
    return any(
        block["type"] == "text" and block["text"].lstrip().startswith("/") for block in content
    )
