"""Async jobs through the real `ccgate serve`, the real CLI and the fake API: SSE, polling,
listing, cancel, timeouts and signed webhooks (restarts: test_crash_recovery.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.e2e.conftest import (
    HTTP_TIMEOUT_SECS,
    HookServer,
    StartServer,
    keyed_client,
    wait_for_no_runs,
    wait_for_run_started,
    wait_until,
)
from tests.support.fake_anthropic import FakeAnthropic, Hang, Text
from tests.support.server import ServerProcess

pytestmark = pytest.mark.real_cli

TERMINAL = frozenset({"completed", "failed", "cancelled"})
# Longer than any gap between two events here, shorter than the 15 s SSE heartbeat: a stream
# that never closes fails the read instead of hanging the test.
SSE_READ_TIMEOUT_SECS = 10.0
SLOW_TEXT = "one two three four five six"


@dataclass(frozen=True)
class Event:
    """One SSE event as a subscriber received it, with its arrival time."""

    id: int
    type: str
    data: dict[str, Any]
    at: float


def read_sse(
    client: httpx.Client,
    job_id: str,
    *,
    last_event_id: int | None = None,
    limit: int | None = None,
) -> list[Event]:
    """The job's SSE events until the server closes the stream (or `limit` events arrived)."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    timeout = httpx.Timeout(HTTP_TIMEOUT_SECS, read=SSE_READ_TIMEOUT_SECS)
    events: list[Event] = []
    fields: dict[str, str] = {}
    url = f"/api/v1/jobs/{job_id}/sse"
    with client.stream("GET", url, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read().decode()
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if fields:
                data = json.loads(fields["data"])
                events.append(Event(int(fields["id"]), fields["event"], data, time.monotonic()))
                fields = {}
                if limit is not None and len(events) >= limit:
                    break
    return events


def submit(client: httpx.Client, **body: Any) -> dict[str, Any]:
    """POST /api/v1/jobs; assert the 202 and return the job object."""
    response = client.post("/api/v1/jobs", json={"prompt": "hi", **body})
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def get_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """GET /api/v1/jobs/{id}; assert the 200 and return the job object."""
    response = client.get(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_for_job(
    client: httpx.Client, job_id: str, statuses: frozenset[str] = TERMINAL, timeout: float = 30.0
) -> dict[str, Any]:
    """Poll the job until its status is one of `statuses`; return it."""
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(get_job(client, job_id))
        return seen["status"] in statuses

    assert wait_until(reached, timeout, interval=0.1), f"job stuck as {seen.get('status')}"
    return seen


def client_for(server: ServerProcess, key: str) -> httpx.Client:
    """A client for `server` sending `key` (a key kept across a restart); close it."""
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_SECS, headers=headers)


def same_events(events: list[Event]) -> list[tuple[int, str, dict[str, Any]]]:
    """The events without their arrival times, for comparing two reads."""
    return [(e.id, e.type, e.data) for e in events]


# -- SSE --------------------------------------------------------------------------------------


def test_sse_streams_chunks_live_before_result(fake: FakeAnthropic, client: httpx.Client) -> None:
    """A subscriber right after submit gets ordered chunks live, well before the result."""
    fake.reply(Text(SLOW_TEXT, chunks=6, delay=0.3))

    job = submit(client)
    events = read_sse(client, job["job_id"])

    chunks = [e for e in events if e.type == "chunk"]
    result = events[-1]
    assert events[0].type == "status"
    assert result.type == "result", [e.type for e in events]
    assert len(chunks) >= 4, [e.data for e in chunks]
    assert result.at - chunks[0].at > 1.0, "the chunks arrived in one burst with the result"
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert "".join(c.data["text"] for c in chunks) == result.data["result"] == SLOW_TEXT


def test_sse_resume_with_last_event_id_misses_nothing(
    fake: FakeAnthropic, client: httpx.Client
) -> None:
    """Reconnecting with Last-Event-ID mid-run continues exactly where the first read stopped."""
    fake.reply(Text(SLOW_TEXT, chunks=6, delay=0.4))
    job_id = submit(client)["job_id"]

    first = read_sse(client, job_id, limit=3)
    assert get_job(client, job_id)["status"] == "processing", "disconnected too late"
    second = read_sse(client, job_id, last_event_id=first[-1].id)
    full = read_sse(client, job_id)

    assert [e.type for e in first] == ["status", "chunk", "chunk"]
    assert second[-1].type == "result"
    assert same_events(first + second) == same_events(full)
    assert "".join(e.data["text"] for e in full if e.type == "chunk") == SLOW_TEXT


def test_sse_late_subscriber_gets_full_replay(fake: FakeAnthropic, client: httpx.Client) -> None:
    """After completion a new subscriber replays status, chunks and result, then the stream ends."""
    fake.reply(Text(SLOW_TEXT, chunks=3))
    job_id = submit(client)["job_id"]
    assert wait_for_job(client, job_id)["status"] == "completed"

    events = read_sse(client, job_id)

    types = [e.type for e in events]
    assert types[0] == "status" and types[-1] == "result", types
    assert set(types[1:-1]) == {"chunk"}
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert "".join(e.data["text"] for e in events[1:-1]) == SLOW_TEXT
    assert events[-1].data["status"] == "completed"
    assert events[-1].data["result"] == SLOW_TEXT


# -- polling and listing ----------------------------------------------------------------------


def test_jobs_submit_then_poll_until_completed(fake: FakeAnthropic, client: httpx.Client) -> None:
    """POST /api/v1/jobs answers 202 at once with a Location; polling reaches completed."""
    fake.reply(Text("polled answer"))

    response = client.post("/api/v1/jobs", json={"prompt": "hi", "metadata": {"n": 1}})

    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] in {"queued", "processing"}
    assert response.headers["location"] == f"/api/v1/jobs/{job['job_id']}"
    done = wait_for_job(client, job["job_id"])
    assert done["status"] == "completed", done
    assert done["result"] == "polled answer"
    assert done["metadata"] == {"n": 1}
    assert done["attempts"] == 1


def test_jobs_list_shows_submitted_job(client: httpx.Client) -> None:
    """GET /api/v1/jobs lists the caller's finished job with its final status."""
    job_id = submit(client)["job_id"]
    wait_for_job(client, job_id)

    response = client.get("/api/v1/jobs")

    assert response.status_code == 200, response.text
    page = response.json()
    assert page["total"] == 1
    assert [j["job_id"] for j in page["jobs"]] == [job_id]
    assert page["jobs"][0]["status"] == "completed"
    assert page["jobs"][0]["result"] == "Hello from fake"


def test_jobs_other_key_gets_404(gateway: ServerProcess, client: httpx.Client) -> None:
    """Another key polling, streaming, cancelling or listing key A's job finds nothing."""
    job_id = submit(client)["job_id"]

    with keyed_client(gateway, "other") as other:
        answers = [
            other.get(f"/api/v1/jobs/{job_id}"),
            other.get(f"/api/v1/jobs/{job_id}/sse"),
            other.post(f"/api/v1/jobs/{job_id}/cancel"),
        ]
        listed = other.get("/api/v1/jobs").json()

    assert [a.status_code for a in answers] == [404, 404, 404], [a.text for a in answers]
    assert {a.json()["error"]["type"] for a in answers} == {"not_found"}
    assert listed["total"] == 0
    assert wait_for_job(client, job_id)["status"] == "completed"


# -- cancel -----------------------------------------------------------------------------------


def test_cancel_running_job_kills_cli(
    fake: FakeAnthropic, client: httpx.Client, work_dir: Path
) -> None:
    """Cancelling a processing job answers 200 cancelled and leaves no claude process."""
    fake.reply(Hang())
    job_id = submit(client)["job_id"]
    wait_for_run_started(fake, work_dir)

    response = client.post(f"/api/v1/jobs/{job_id}/cancel")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert response.json()["error"]["type"] == "cancelled"
    assert wait_for_no_runs(work_dir, timeout=5) == []
    assert get_job(client, job_id)["status"] == "cancelled"


def test_cancel_is_not_overwritten_by_late_result(
    fake: FakeAnthropic, client: httpx.Client, work_dir: Path
) -> None:
    """A job cancelled mid-answer stays cancelled: the run's later end never overwrites it."""
    fake.reply(Text("late answer", chunks=2, delay=1.0))
    job_id = submit(client)["job_id"]
    wait_for_run_started(fake, work_dir)

    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    states = []
    for _ in range(15):
        states.append(get_job(client, job_id))
        time.sleep(0.2)

    assert {s["status"] for s in states} == {"cancelled"}
    assert {s["result"] for s in states} == {None}
    assert len({s["finished_at"] for s in states}) == 1
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 409
    assert wait_for_no_runs(work_dir) == []


def test_cancel_ends_sse_with_cancelled_result(
    fake: FakeAnthropic, client: httpx.Client, work_dir: Path
) -> None:
    """A subscriber of a job that gets cancelled sees a final `result` event, status cancelled."""
    fake.reply(Hang())
    job_id = submit(client)["job_id"]
    wait_for_run_started(fake, work_dir)

    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(read_sse, client, job_id)
        time.sleep(0.5)
        assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
        events = reading.result()

    assert events[0].type == "status"
    assert events[-1].type == "result", [e.type for e in events]
    assert events[-1].data["status"] == "cancelled"
    assert events[-1].data["error"]["type"] == "cancelled"
    assert [e.id for e in events] == list(range(1, len(events) + 1))


# -- timeouts ---------------------------------------------------------------------------------


def test_timeout_wall_clock_fails_async_job(
    fake: FakeAnthropic, client: httpx.Client, work_dir: Path
) -> None:
    """An async job on a hung upstream with `timeout_secs: 2` fails as a wall-clock timeout."""
    fake.reply(Hang())

    started = time.monotonic()
    job = wait_for_job(client, submit(client, timeout_secs=2)["job_id"])
    elapsed = time.monotonic() - started

    assert job["status"] == "failed", job
    assert job["error"]["type"] == "timeout"
    assert "wall-clock" in job["error"]["message"]
    assert 2 <= elapsed < 15
    assert fake.message_requests(), "the CLI never reached the upstream"
    assert wait_for_no_runs(work_dir) == []


def test_timeout_idle_fails_async_job(
    fake: FakeAnthropic, start_server: StartServer, server_env: dict[str, str], work_dir: Path
) -> None:
    """An async job silent for CCGATE_IDLE_TIMEOUT_SECS fails as an idle timeout."""
    server = start_server(server_env, CCGATE_IDLE_TIMEOUT_SECS=2)
    fake.reply(Hang())

    with keyed_client(server) as client:
        started = time.monotonic()
        job = wait_for_job(client, submit(client)["job_id"])
        elapsed = time.monotonic() - started

    assert job["status"] == "failed", job
    assert job["error"]["type"] == "timeout"
    assert "idle" in job["error"]["message"]
    assert 2 <= elapsed < 15
    assert wait_for_no_runs(work_dir) == []


# -- webhooks ---------------------------------------------------------------------------------


def test_webhook_delivers_signed_job_object(
    start_server: StartServer, server_env: dict[str, str], hook_server: HookServer
) -> None:
    """The callback gets one POST of the completed job, signed with the key's webhook secret
    both ways: the standardwebhooks library and the X-Ccgate-Signature recipe accept it."""
    server = start_server(server_env, CCGATE_OUTBOUND_ALLOW="127.0.0.1")
    created = server.cli("keys", "create", "hooks")
    key = created.stdout.strip().splitlines()[-1]
    secret = re.search(r"Webhook signing secret[^:]*: (\S+)", created.stderr)
    assert created.returncode == 0 and secret, created.stderr
    url = f"http://127.0.0.1:{hook_server.server_address[1]}/hook"
    with client_for(server, key) as client:
        job_id = submit(client, callback_url=url)["job_id"]
        assert wait_until(lambda: bool(hook_server.hooks), 30), "no webhook arrived"
        assert wait_until(lambda: get_job(client, job_id)["webhook"]["status"] != "pending", 10)
        job = get_job(client, job_id)

    [hook] = hook_server.hooks
    ts = hook.headers["x-ccgate-timestamp"]
    mac = hmac.new(secret.group(1).encode(), f"{ts}.".encode() + hook.body, hashlib.sha256)
    assert hmac.compare_digest(hook.headers["x-ccgate-signature"], f"sha256={mac.hexdigest()}")
    assert hook.headers["x-ccgate-event-id"] == job["webhook"]["event_id"]
    assert Webhook(secret.group(1)).verify(hook.body, hook.headers)["job_id"] == job_id
    assert hook.headers["webhook-id"] == job["webhook"]["event_id"]
    assert json.loads(hook.body) == {k: v for k, v in job.items() if k != "webhook"}
    assert job["status"] == "completed" and job["webhook"]["status"] == "delivered"
