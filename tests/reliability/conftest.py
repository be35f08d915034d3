"""Reliability fixtures: real servers started per module, and real ids made in them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.reliability.gate import (
    ADMIN_TOKEN,
    API_KEY_NAME,
    Gate,
    create_api_key,
    gate_env,
)
from tests.reliability.openapi_passes import Principals, make_principals
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def start_gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Gate]]:
    """Factory: `start_gate(**CCGATE_overrides)` starts a server with a fresh API key;
    every server stops when the module ends (its log is printed for a failed test)."""
    started: list[ServerProcess] = []

    def start(**overrides: Any) -> Gate:
        root = tmp_path_factory.mktemp("gate")
        server = ServerProcess(gate_env(root, **overrides), root / "server")
        started.append(server)
        server.start()
        key = create_api_key(server.url, ADMIN_TOKEN, API_KEY_NAME)
        return Gate(server, ADMIN_TOKEN, key, API_KEY_NAME)

    yield start
    for server in reversed(started):
        server.stop()
        print(f"--- log of ccgate serve in {server.cwd} ---\n{server.log_text()[-20000:]}")


@pytest.fixture(scope="module")
def principals(gate: Gate) -> Principals:
    """Real ids and a device token made through the API of this module's `gate`."""
    return make_principals(gate)
