"""Client fixtures: one real ``ccgate serve`` per module running the fake ``claude``."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.client.dropping_proxy import DroppingProxy
from tests.support.fake_claude_factory import make_fake_claude
from tests.support.server import ServerProcess, fake_claude_env

# Every answer echoes its prompt in six chunks, so a stream has several events to resume.
FAKE_REPLY = {"chunks": 6, "delay": 0.05}


@dataclass
class Gateway:
    """A running ``ccgate serve`` for client tests, with its admin token."""

    server: ServerProcess
    admin_token: str

    @property
    def url(self) -> str:
        """The server's base URL (on 127.0.0.1)."""
        return self.server.url

    def create_key(self, **policy: Any) -> tuple[str, str]:
        """A fresh API key with ``policy`` (admin API); its secret and its webhook secret."""
        body = {"name": f"client-{secrets.token_hex(4)}", **policy}
        response = httpx.post(
            f"{self.url}/admin/keys",
            json=body,
            timeout=30,
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        assert response.status_code == 201, response.text
        return response.json()["key"], response.json()["webhook_secret"]

    def key(self, **policy: Any) -> str:
        """A fresh API key's secret."""
        return self.create_key(**policy)[0]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One real ``ccgate serve`` with the fake claude, webhooks allowed to 127.0.0.1."""
    root = tmp_path_factory.mktemp("client")
    admin_token = "client-admin-" + secrets.token_hex(16)
    claude = make_fake_claude(root / "fake-claude", "echo", **FAKE_REPLY)
    env = fake_claude_env(
        root, claude, admin_token, CCGATE_OUTBOUND_ALLOW="127.0.0.1", CCGATE_SSE_HEARTBEAT_SECS=1
    )
    server = ServerProcess(env, root / "server").start()
    try:
        yield Gateway(server, admin_token)
    finally:
        server.stop()
        # pytest shows this only when a test failed.
        print(f"--- log of ccgate serve in {server.cwd} ---\n{server.log_text()}")


@pytest.fixture
def api_key(gateway: Gateway) -> str:
    """A fresh API key without limits."""
    return gateway.key()


@pytest.fixture
def dropping_proxy(gateway: Gateway) -> Iterator[DroppingProxy]:
    """A proxy to ``gateway`` that cuts the first event stream after two events."""
    with DroppingProxy(gateway.server.port, drops=1, after_events=2) as proxy:
        yield proxy
