"""Message Batches across a stop (SIGTERM) or a `kill -9` of a real `ccgate serve` running the
fake claude, restarted on the same SQLite file: the batch ends, every request has exactly one
result, and no request ran twice to success (the fake CLI records every run)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import anthropic
import pytest

from tests.support.fake_claude_factory import make_fake_claude
from tests.support.server import ServerProcess, fake_claude_env, processes_under

REQUESTS = 12
IN_FLIGHT = 2


def _prompt(i: int) -> str:
    return f"batch-item-{i:04d}"


def _runs(record: Path) -> Counter[str]:
    """How many CLI runs the fake saw for each batch prompt."""
    seen: Counter[str] = Counter()
    if not record.exists():
        return seen
    for line in record.read_text(encoding="utf-8").splitlines():
        stdin = json.loads(line).get("stdin", "")
        seen.update(_prompt(i) for i in range(REQUESTS) if _prompt(i) in stdin)
    return seen


def _wait(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def server_env(tmp_path: Path) -> dict[str, str]:
    """A fake claude that answers each prompt slowly (recording every run), and a server
    environment on one SQLite file."""
    claude = make_fake_claude(
        tmp_path / "fake-claude",
        "echo",
        chunks=4,
        delay=0.1,
        record=str(tmp_path / "runs.jsonl"),
    )
    return fake_claude_env(
        tmp_path,
        claude,
        "admin-" + secrets.token_hex(16),
        CCGATE_BATCH_INFLIGHT=IN_FLIGHT,
        CCGATE_CONCURRENCY=4,
        CCGATE_SHUTDOWN_GRACE_SECS=1,
        CCGATE_KILL_GRACE_SECS=1,
        CCGATE_POOL_MODE="off",
    )


def _start(env: dict[str, str], cwd: Path) -> ServerProcess:
    return ServerProcess(env, cwd).start()


def _create_batch(server: ServerProcess) -> tuple[str, str]:
    key = server.create_key("batches")
    with anthropic.Anthropic(api_key=key, base_url=server.url, max_retries=0) as client:
        batch = client.messages.batches.create(
            requests=[
                {
                    "custom_id": f"req-{i}",
                    "params": {
                        "model": "sonnet",
                        "max_tokens": 32,
                        "messages": [{"role": "user", "content": _prompt(i)}],
                    },
                }
                for i in range(REQUESTS)
            ]
        )
    assert batch.processing_status == "in_progress"
    return key, batch.id


def _finish_and_check(server: ServerProcess, key: str, batch_id: str, record: Path) -> None:
    with anthropic.Anthropic(api_key=key, base_url=server.url, max_retries=0) as client:
        _wait(lambda: client.messages.batches.retrieve(batch_id).processing_status == "ended", 120)
        batch = client.messages.batches.retrieve(batch_id)
        assert batch.request_counts.succeeded == REQUESTS, batch.request_counts
        assert batch.results_url is not None and batch.results_url.startswith(server.url)
        results = list(client.messages.batches.results(batch_id))
        assert sorted(r.custom_id for r in results) == sorted(f"req-{i}" for i in range(REQUESTS))
        for result in results:
            assert result.result.type == "succeeded"
            i = int(result.custom_id.removeprefix("req-"))
            assert _prompt(i) in result.result.message.content[0].text  # type: ignore[union-attr]
        runs = _runs(record)
        assert set(runs) == {_prompt(i) for i in range(REQUESTS)}
        # Only a run cut by the stop may run again: at most the batch's in-flight bound.
        assert sum(runs.values()) - REQUESTS <= IN_FLIGHT, runs
        assert max(runs.values()) <= 2, runs


def _one_job_per_request(database: Path) -> None:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        rows = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT job_id) FROM batch_requests WHERE job_id IS NOT NULL"
        ).fetchone()
    assert rows == (REQUESTS, REQUESTS)


def test_batches_restart_after_sigterm_finishes_every_request_once(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGTERM mid-batch, start again on the same file: the batch ends, one result each."""
    record = tmp_path / "runs.jsonl"
    server = _start(server_env, tmp_path / "first")
    try:
        key, batch_id = _create_batch(server)
        _wait(lambda: sum(_runs(record).values()) >= 3, 60)
    finally:
        server.stop()
    assert sum(_runs(record).values()) < REQUESTS  # stopped mid-batch
    again = _start(server_env, tmp_path / "second")
    try:
        _finish_and_check(again, key, batch_id, record)
    finally:
        again.stop()
        print(f"--- logs ---\n{server.log_text()}\n{again.log_text()}")
    _one_job_per_request(tmp_path / "ccgate.db")


def test_batches_restart_after_kill_9_finishes_every_request_once(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    """`kill -9` mid-batch (and its orphaned CLIs), start again: one result each."""
    record = tmp_path / "runs.jsonl"
    server = _start(server_env, tmp_path / "first")
    try:
        key, batch_id = _create_batch(server)
        _wait(lambda: sum(_runs(record).values()) >= 3, 60)
        os.kill(server.pid, signal.SIGKILL)
        assert server.proc is not None
        server.proc.wait(5)
        for pid in processes_under(tmp_path / "work"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    finally:
        server.stop()
    assert sum(_runs(record).values()) < REQUESTS  # killed mid-batch
    again = _start(server_env, tmp_path / "second")
    try:
        _finish_and_check(again, key, batch_id, record)
    finally:
        again.stop()
        print(f"--- logs ---\n{server.log_text()}\n{again.log_text()}")
    _one_job_per_request(tmp_path / "ccgate.db")
