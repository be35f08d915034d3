"""Two real `ccgate serve` processes on one database and one Redis share every key's limits.

Memory limits (no CCGATE_REDIS_URL) are per process by design, so they are not tested here.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ccgate.store import Store
from tests.conftest import service_missing
from tests.e2e.conftest import HTTP_TIMEOUT_SECS, StartServer, run_in_background, wait_until
from tests.support.fake_anthropic import FakeAnthropic, Text, cli_env
from tests.support.server import ServerProcess

REDIS_URL = os.environ.get("CCGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# ccgate's fixed Redis key prefix (Limiter's key_prefix; no setting changes it).
REDIS_PREFIX = "ccgate:"
MESSAGE = {"model": "sonnet", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
RUN = {"prompt": "hi"}

StartPair = Callable[..., tuple[ServerProcess, ServerProcess]]


def _redis_problem(url: str) -> str | None:
    try:
        import redis
    except ImportError:
        return "redis is not installed (pip install '.[redis]')"
    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"Redis not reachable at {url}: {type(exc).__name__}"
    finally:
        client.close()
    return None


async def _key_ids(database_url: str) -> list[str]:
    store = await Store.open(database_url, migrate=False)
    try:
        return [record.id for record in await store.keys.list()]
    finally:
        await store.close()


def _forget_redis_keys(database_url: str) -> None:
    """Delete the Redis keys of every API key in this test's own database, and no others."""
    import redis

    if not Path(database_url.removeprefix("sqlite:///")).exists():
        return
    ids = asyncio.run(_key_ids(database_url))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        mine = [
            name
            for name in client.scan_iter(match=f"{REDIS_PREFIX}*")
            if any(key_id in name.decode() for key_id in ids)
        ]
        if mine:
            client.delete(*mine)
    finally:
        client.close()


@pytest.fixture
def shared_env(
    fake: FakeAnthropic, home: Path, work_dir: Path, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """API-backend server environment on one SQLite file and Redis; cleans Redis afterwards."""
    problem = _redis_problem(REDIS_URL)
    if problem:
        service_missing(problem)
    database_url = f"sqlite:///{tmp_path / 'shared.db'}"
    yield {
        **cli_env(fake, home),
        "CCGATE_BACKEND": "api",
        "CCGATE_WORK_DIR": str(work_dir),
        "CCGATE_DATABASE_URL": database_url,
        "CCGATE_REDIS_URL": REDIS_URL,
    }
    _forget_redis_keys(database_url)


@pytest.fixture
def start_pair(shared_env: dict[str, str], start_server: StartServer) -> StartPair:
    """Factory: two servers sharing the database and Redis (CCGATE_ overrides for both)."""
    # shared_env is set up before start_server, so the servers stop before Redis is cleaned.

    def start(**overrides: Any) -> tuple[ServerProcess, ServerProcess]:
        return start_server(shared_env, **overrides), start_server(shared_env, **overrides)

    return start


def _client(server: ServerProcess, *options: str, name: str = "app") -> httpx.Client:
    """A client of `server` with a new key made by `ccgate keys create NAME OPTIONS`."""
    done = server.cli("keys", "create", name, *options)
    assert done.returncode == 0, done.stderr
    headers = {"Authorization": f"Bearer {done.stdout.strip().splitlines()[-1]}"}
    return httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_SECS, headers=headers)


def _twin(http: httpx.Client, server: ServerProcess) -> httpx.Client:
    """A client of `server` that sends the same key as `http`."""
    return httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_SECS, headers=http.headers)


def test_limits_rpm_is_shared_by_two_servers(start_pair: StartPair) -> None:
    """rpm=3 allows 3 requests across both servers in total; the 4th is 429 on either."""
    server_a, server_b = start_pair()
    with (
        _client(server_a, "--rpm", "3") as a,
        _twin(a, server_b) as b,
        _client(server_b, "--rpm", "3", name="other") as other,
    ):
        assert a.post("/v1/messages", json=MESSAGE).status_code == 200
        assert a.post("/api/v1/run", json=RUN).status_code == 200
        third = b.post("/api/v1/run", json=RUN)
        refused_b = b.post("/api/v1/run", json=RUN)
        refused_a = a.post("/v1/messages", json=MESSAGE)
        assert other.post("/api/v1/run", json=RUN).status_code == 200
    assert third.status_code == 200, third.text
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused_b.status_code == 429
    assert refused_b.json()["error"]["type"] == "rpm_exceeded"
    assert 1 <= int(refused_b.headers["Retry-After"]) <= 60
    assert refused_a.status_code == 429
    assert refused_a.json()["error"]["type"] == "rate_limit_error"
    assert refused_a.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert "Retry-After" in refused_a.headers


def test_limits_shared_rpm_window_frees_on_the_other_server(start_pair: StartPair) -> None:
    """After a 429 on one server, waiting Retry-After lets the key in again on the other."""
    server_a, server_b = start_pair(CCGATE_RPM_WINDOW_SECS=2)
    with _client(server_a, "--rpm", "2") as a, _twin(a, server_b) as b:
        assert a.post("/api/v1/run", json=RUN).status_code == 200
        assert b.post("/api/v1/run", json=RUN).status_code == 200
        refused = a.post("/api/v1/run", json=RUN)
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "rpm_exceeded"
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 2
        assert b.post("/api/v1/run", json=RUN).status_code == 429
        time.sleep(retry_after + 0.2)
        again = b.post("/api/v1/run", json=RUN)
    assert again.status_code == 200, again.text


def test_limits_concurrency_slot_is_shared_by_two_servers(
    start_pair: StartPair, fake: FakeAnthropic
) -> None:
    """concurrency=1: a request running on one server makes the other answer 429 until it ends."""
    server_a, server_b = start_pair()
    fake.reply(Text("slow answer", delay=3))
    with _client(server_a, "--concurrency", "1") as a, _twin(a, server_b) as b:
        with run_in_background(a, RUN) as running:
            assert wait_until(lambda: bool(fake.message_requests()), 20)
            busy = b.post("/api/v1/run", json=RUN)
            assert not running.done()
        assert running.result().status_code == 200
        after = b.post("/api/v1/run", json=RUN)
    assert busy.status_code == 429
    assert busy.json()["error"]["type"] == "concurrency_exceeded"
    assert busy.headers["Retry-After"] == "1"
    assert after.status_code == 200, after.text
