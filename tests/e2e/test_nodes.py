"""Two real `ccgate serve` processes on one fresh PostgreSQL database (and Redis, or not):
events, waiters, the circuit, revocation, sessions and crash recovery across nodes."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.conftest import (
    REDIS_URL,
    redis_problem,
    service_missing,
)
from tests.e2e.conftest import HTTP_TIMEOUT_SECS, HookServer, StartServer, wait_until
from tests.support.fake_anthropic import FAKE_API_KEY, Error, FakeAnthropic, Text, cli_env
from tests.support.server import ServerProcess

StartPair = Callable[..., tuple[ServerProcess, ServerProcess]]
ADMIN = "nodes-admin-token-0123456789abcdefghijk"
# Well under the 1 s store poll every node keeps as its fallback.
CROSS_NODE_LAG_SECS = 0.3


@pytest.fixture(params=["redis", "postgresql"])
def start_pair(
    request: pytest.FixtureRequest,
    postgres_url: str,
    fake: FakeAnthropic,
    home: Any,
    work_dir: Any,
    start_server: StartServer,
) -> StartPair:
    """Factory: two API-backend servers on the fresh database, their events carried by Redis
    pub/sub or by PostgreSQL NOTIFY (no Redis), with the same CCGATE_ overrides."""
    env = {
        **cli_env(fake, home),
        "CCGATE_BACKEND": "api",
        "ANTHROPIC_BASE_URL": fake.url,
        "ANTHROPIC_API_KEY": FAKE_API_KEY,
        "CCGATE_WORK_DIR": str(work_dir),
        "CCGATE_DATABASE_URL": postgres_url,
        "CCGATE_ADMIN_TOKEN": ADMIN,
    }
    if request.param == "redis":
        problem = asyncio.run(redis_problem(REDIS_URL))
        if problem:
            service_missing(problem)
        env["CCGATE_REDIS_URL"] = REDIS_URL

    def start(**overrides: Any) -> tuple[ServerProcess, ServerProcess]:
        return start_server(env, **overrides), start_server(env, **overrides)

    return start


def _client(server: ServerProcess, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, timeout=HTTP_TIMEOUT_SECS, headers={"Authorization": f"Bearer {key}"}
    )


def _arrivals(
    http: httpx.Client, job_id: str, out: dict[int, float], ready: threading.Event
) -> None:
    """Read the job's SSE stream, noting when each event id arrived."""
    with http.stream("GET", f"/api/v1/jobs/{job_id}/sse") as response:
        ready.set()
        for line in response.iter_lines():
            if line.startswith("id: "):
                out[int(line[4:])] = time.monotonic()
            if line == "event: result":
                return


def test_nodes_sse_on_b_gets_chunks_of_a_job_on_a_at_once(
    start_pair: StartPair, fake: FakeAnthropic
) -> None:
    """Every chunk of a job running on node A reaches an SSE client on node B within
    tens of milliseconds of reaching a client on A, not at the store poll's pace."""
    server_a, server_b = start_pair()
    key = server_a.create_key("nodes")
    fake.reply(Text("alpha beta gamma delta epsilon zeta", chunks=6, delay=0.7))
    with _client(server_a, key) as a, _client(server_b, key) as b:
        job_id = a.post("/api/v1/jobs", json={"prompt": "go"}).json()["job_id"]
        seen_a: dict[int, float] = {}
        seen_b: dict[int, float] = {}
        ready = [threading.Event(), threading.Event()]
        with ThreadPoolExecutor(2) as pool:
            done = [
                pool.submit(_arrivals, a, job_id, seen_a, ready[0]),
                pool.submit(_arrivals, b, job_id, seen_b, ready[1]),
            ]
            for future in done:
                future.result(timeout=60)
    # The first chunk may come before B's stream is open; judge the ones after it.
    later = sorted(seq for seq in seen_a if seq in seen_b)[2:]
    assert len(later) >= 4
    lags = [seen_b[seq] - seen_a[seq] for seq in later]
    assert max(lags) < CROSS_NODE_LAG_SECS, lags


def test_nodes_sync_waiter_on_b_is_woken_when_a_ends_its_job(
    start_pair: StartPair, fake: FakeAnthropic
) -> None:
    """A synchronous run queued on a busy node B and run by node A is answered on B within
    tens of milliseconds of A ending it."""
    server_a, server_b = start_pair(CCGATE_CONCURRENCY=1)
    key = server_a.create_key("nodes")
    fake.reply(Text("holding node b", chunks=2, delay=6))
    with _client(server_a, key) as a, _client(server_b, key) as b:
        b.post("/api/v1/jobs", json={"prompt": "hold"}).raise_for_status()
        assert wait_until(lambda: bool(fake.message_requests()), 20)
        lags = []
        for _ in range(2):
            fake.reply(Text("quick answer", chunks=3, delay=0.2))
            answer = b.post("/api/v1/run", json={"prompt": "quick"})
            received = time.time()
            assert answer.status_code == 200, answer.text
            job = a.get(f"/api/v1/jobs/{answer.json()['job_id']}").json()
            lags.append(received - datetime.fromisoformat(job["finished_at"]).timestamp())
    assert max(lags) < CROSS_NODE_LAG_SECS, lags


def _ask(http: httpx.Client) -> httpx.Response:
    return http.post(
        "/v1/messages",
        json={"model": "sonnet", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
    )


@pytest.mark.parametrize("start_pair", ["redis"], indirect=True)
def test_nodes_circuit_opened_on_a_is_open_on_b(start_pair: StartPair, fake: FakeAnthropic) -> None:
    """With Redis, upstream failures that open the circuit on node A open it on node B at
    once: B fails fast without calling the upstream, and one probe closes it on both."""
    server_a, server_b = start_pair(CCGATE_CIRCUIT_FAILURES=2, CCGATE_CIRCUIT_COOLDOWN_SECS=1)
    key = server_a.create_key("nodes")
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with _client(server_a, key) as a, _client(server_b, key) as b:
        a.post("/admin/circuit/reset", headers=admin)
        for _ in range(2):
            fake.reply(Error(529, "overloaded_error", "busy"))
            assert _ask(a).status_code == 503
        calls = len(fake.message_requests())
        assert wait_until(
            lambda: b.get("/admin/circuit", headers=admin).json()["state"] == "open", 2
        )
        refused = _ask(b)
        assert refused.status_code == 503 and "Retry-After" in refused.headers
        assert len(fake.message_requests()) == calls
        time.sleep(1.2)
        assert _ask(b).status_code == 200
        assert wait_until(
            lambda: a.get("/admin/circuit", headers=admin).json()["state"] == "closed", 2
        )


def test_nodes_revoked_key_is_refused_on_the_other_node(start_pair: StartPair) -> None:
    """A key revoked through node A is refused by node B at its very next request."""
    server_a, server_b = start_pair()
    key = server_a.create_key("nodes")
    with _client(server_b, key) as b:
        assert b.post("/api/v1/run", json={"prompt": "hi"}).status_code == 200
        revoked = httpx.delete(
            f"{server_a.url}/admin/keys/nodes", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert revoked.status_code < 300, revoked.text
        refused = b.post("/api/v1/run", json={"prompt": "hi"})
    assert refused.status_code == 401


def test_nodes_session_continues_on_the_other_node(
    start_pair: StartPair, fake: FakeAnthropic
) -> None:
    """A session started on node A is continued on node B with A's turn in its history."""
    server_a, server_b = start_pair()
    key = server_a.create_key("nodes")
    with _client(server_a, key) as a, _client(server_b, key) as b:
        first = a.post("/api/v1/run", json={"prompt": "remember kiwi"}).json()
        second = b.post(
            "/api/v1/run", json={"prompt": "what fruit?", "session_id": first["session_id"]}
        )
    assert second.status_code == 200, second.text
    assert second.json()["session_id"] == first["session_id"]
    assert "remember kiwi" in str(fake.message_requests()[-1].body)


def test_nodes_job_of_a_killed_node_is_rerun_by_the_other(
    start_pair: StartPair, fake: FakeAnthropic
) -> None:
    """After `kill -9` of node A mid-job, node B re-runs the job once its lease runs out."""
    server_a, server_b = start_pair(CCGATE_LEASE_SECS=5)
    key = server_a.create_key("nodes")
    fake.reply(Text("never finished", chunks=2, delay=30))
    fake.reply(Text("done on b"))
    with _client(server_a, key) as a, _client(server_b, key) as b:
        job_id = a.post("/api/v1/jobs", json={"prompt": "go"}).json()["job_id"]
        assert wait_until(lambda: bool(fake.message_requests()), 20)
        os.kill(server_a.pid, signal.SIGKILL)
        assert wait_until(
            lambda: b.get(f"/api/v1/jobs/{job_id}").json()["status"] == "completed",
            60,
            interval=0.5,
        )
        job = b.get(f"/api/v1/jobs/{job_id}").json()
    assert job["result"] == "done on b"


def test_nodes_deliver_each_webhook_event_once(
    start_pair: StartPair, fake: FakeAnthropic, hook_server: HookServer
) -> None:
    """Jobs submitted to both nodes, their first deliveries refused and retried: every event
    reaches the receiver exactly once with a success, whichever node's dispatcher sends it."""
    server_a, server_b = start_pair(CCGATE_OUTBOUND_ALLOW="127.0.0.1")
    key = server_a.create_key("nodes")
    hook_server.failures = 4
    with _client(server_a, key) as a, _client(server_b, key) as b:
        job_ids = [
            client.post(
                "/api/v1/jobs", json={"prompt": f"job {n}", "callback_url": hook_server.url}
            ).json()["job_id"]
            for n, client in enumerate([a, b] * 4)
        ]

        def all_delivered() -> bool:
            views = [a.get(f"/api/v1/jobs/{job_id}").json()["webhook"] for job_id in job_ids]
            return all(view and view["status"] == "delivered" for view in views)

        assert wait_until(all_delivered, 60, interval=0.5)
        events = {
            a.get(f"/api/v1/jobs/{job_id}").json()["webhook"]["event_id"] for job_id in job_ids
        }
    time.sleep(1.5)  # a second sender, if there were one, would have sent by now
    with hook_server.lock:
        answered = [hook.headers["webhook-id"] for hook in hook_server.hooks[4:]]
    assert sorted(answered) == sorted(events) and len(events) == len(job_ids)
