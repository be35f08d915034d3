"""Async jobs across a server's death (`kill -9`) or stop (SIGTERM) and the next start on the
same database: no job lost, attempts counted right, SSE resumable with Last-Event-ID."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.conftest import StartServer, wait_for_no_runs, wait_for_run_started
from tests.e2e.test_async_jobs import (
    SLOW_TEXT,
    Event,
    client_for,
    get_job,
    read_sse,
    submit,
    wait_for_job,
)
from tests.support.fake_anthropic import FakeAnthropic, Text
from tests.support.server import ServerProcess, processes_under

pytestmark = pytest.mark.real_cli

# The server flushes job events to the store every 100 ms; wait a few flushes before a crash
# so the store holds every event a subscriber has already seen.
FLUSHED_SECS = 0.5
# SIGTERM with CCGATE_SHUTDOWN_GRACE_SECS=1 and CCGATE_KILL_GRACE_SECS=1, plus 2 s for the CLI
# to die and Python to exit.
PROMPT_STOP_SECS = 4


@pytest.fixture
def start_shared(
    start_server: StartServer, server_env: dict[str, str], tmp_path: Path
) -> StartServer:
    """Factory `start_shared(**CCGATE_overrides)`: servers that all open the same database."""
    env = {**server_env, "CCGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}"}
    return lambda **overrides: start_server(env, **overrides)


def kill_hard(server: ServerProcess, work_dir: Path) -> None:
    """`kill -9` the server, then, as a supervisor would, the CLI process groups it orphaned."""
    os.kill(server.pid, signal.SIGKILL)
    assert server.proc is not None
    server.proc.wait(5)
    for pid in processes_under(work_dir):
        with contextlib.suppress(ProcessLookupError):
            # The CLI leads its own session; never signal a group that is not its own.
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
    assert wait_for_no_runs(work_dir) == []


def assembled_text(events: list[Event]) -> str:
    """The answer as a client following docs/api.md builds it: the chunks since the last
    `status` event that says `restarted` (text from before it is discarded)."""
    text = ""
    for event in events:
        if event.type == "status" and event.data.get("restarted"):
            text = ""
        elif event.type == "chunk":
            text += event.data["text"]
    return text


def described(events: list[Event]) -> list[tuple[int, str, object]]:
    """The events in a short form for assertion messages."""
    return [(e.id, e.type, e.data.get("text", e.data.get("restarted"))) for e in events]


# -- kill -9 ----------------------------------------------------------------------------------


def test_crash_recovery_reruns_killed_job_and_loses_none(
    fake: FakeAnthropic, start_shared: StartServer, work_dir: Path
) -> None:
    """After `kill -9` mid-job, a new server on the same database completes all three jobs."""
    limits = {"CCGATE_MAX_ATTEMPTS": 2, "CCGATE_CONCURRENCY": 1}
    first = start_shared(**limits)
    key = first.create_key("e2e")
    fake.default = Text(SLOW_TEXT, chunks=6, delay=1.0)
    with client_for(first, key) as client:
        job_ids = [submit(client, prompt=f"job {n}")["job_id"] for n in range(3)]
        wait_for_run_started(fake, work_dir)
        states = {j: get_job(client, j)["status"] for j in job_ids}
    kill_hard(first, work_dir)

    fake.default = Text("fast answer")
    with client_for(start_shared(**limits), key) as client:
        jobs = {j: wait_for_job(client, j) for j in job_ids}
        listed = client.get("/api/v1/jobs").json()
    [interrupted] = [j for j, status in states.items() if status == "processing"]
    assert {j["status"] for j in jobs.values()} == {"completed"}, jobs
    assert jobs[interrupted]["attempts"] == 2
    assert max(j["attempts"] for j in jobs.values()) <= 2
    assert listed["total"] == 3
    assert sorted(j["job_id"] for j in listed["jobs"]) == sorted(job_ids)


def test_crash_recovery_sse_resume_sees_restart_and_new_text(
    fake: FakeAnthropic, start_shared: StartServer, work_dir: Path
) -> None:
    """Resuming with Last-Event-ID after a `kill -9` and restart yields the rerun's whole text."""
    first = start_shared()
    key = first.create_key("e2e")
    fake.default = Text(SLOW_TEXT, chunks=6, delay=0.5)
    with client_for(first, key) as client:
        job_id = submit(client)["job_id"]
        before = read_sse(client, job_id, limit=3)
        time.sleep(FLUSHED_SECS)
        assert get_job(client, job_id)["status"] == "processing", "killed too late"
    kill_hard(first, work_dir)

    fake.default = Text("fast answer")
    with client_for(start_shared(), key) as client:
        after = read_sse(client, job_id, last_event_id=before[-1].id)
    ids = [e.id for e in before + after]
    assert ids == sorted(set(ids)), f"event ids reused: {described(before + after)}"
    assert after[-1].type == "result", described(after)
    assert assembled_text(before + after) == after[-1].data["result"] == "fast answer"


# -- SIGTERM ----------------------------------------------------------------------------------


def test_shutdown_requeues_running_job_for_next_start(
    fake: FakeAnthropic, start_shared: StartServer, work_dir: Path
) -> None:
    """SIGTERM mid-job: prompt exit, CLI gone; the restarted server runs the job once more."""
    first = start_shared(CCGATE_SHUTDOWN_GRACE_SECS=1, CCGATE_KILL_GRACE_SECS=1)
    key = first.create_key("e2e")
    fake.default = Text(SLOW_TEXT, chunks=6, delay=1.0)
    with client_for(first, key) as client:
        job_id = submit(client)["job_id"]
        wait_for_run_started(fake, work_dir)
    started = time.monotonic()
    first.stop()

    assert not first.killed and time.monotonic() - started < PROMPT_STOP_SECS
    assert processes_under(work_dir) == []
    fake.default = Text("after restart")
    with client_for(start_shared(), key) as client:
        job = wait_for_job(client, job_id)
    assert job["status"] == "completed", job
    assert job["result"] == "after restart"
    assert job["attempts"] == 1
    assert len(fake.message_requests()) == 2


def test_shutdown_sse_ends_then_resumes_after_restart(
    fake: FakeAnthropic, start_shared: StartServer, work_dir: Path
) -> None:
    """SIGTERM ends an open stream; resuming it after the restart yields the rerun's whole text."""
    first = start_shared(CCGATE_SHUTDOWN_GRACE_SECS=1, CCGATE_KILL_GRACE_SECS=1)
    key = first.create_key("e2e")
    fake.default = Text(SLOW_TEXT, chunks=6, delay=1.0)
    with client_for(first, key) as client, ThreadPoolExecutor(1) as pool:
        job_id = submit(client)["job_id"]
        reading = pool.submit(read_sse, client, job_id)
        wait_for_run_started(fake, work_dir)
        time.sleep(1.0)
        first.stop()
        before = reading.result()

    fake.default = Text("after restart")
    with client_for(start_shared(), key) as client:
        after = read_sse(client, job_id, last_event_id=before[-1].id)
    ids = [e.id for e in before + after]
    assert "result" not in [e.type for e in before], described(before)
    assert ids == sorted(set(ids)), f"event ids reused: {described(before + after)}"
    assert after[-1].type == "result", described(after)
    assert assembled_text(before + after) == after[-1].data["result"] == "after restart"
