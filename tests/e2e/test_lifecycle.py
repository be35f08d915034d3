"""Runs that end early: a client that hangs up, a server told to stop (SIGTERM)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    StartServer,
    keyed_client,
    raw_run_request,
    run_in_background,
    wait_for_no_runs,
    wait_for_run_started,
)
from tests.support.fake_anthropic import FakeAnthropic, Hang, Slow
from tests.support.server import ServerProcess, processes_under

pytestmark = pytest.mark.real_cli

SHUTDOWN_GRACE_SECS = 6
KILL_GRACE_SECS = 1
# Time for uvicorn to notice the signal, the CLI to die and Python to exit.
SHUTDOWN_SLACK_SECS = 2


def test_disconnect_cancels_run_and_kills_cli(
    fake: FakeAnthropic, gateway: ServerProcess, api_key: str, work_dir: Path
) -> None:
    """A client that closes its connection mid-run leaves no claude process behind."""
    fake.reply(Hang())

    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(raw_run_request(api_key, {"prompt": "take forever"}))
        running = wait_for_run_started(fake, work_dir)
        assert running, "no claude process ran under CCGATE_WORK_DIR"
    disconnected = time.monotonic()

    assert wait_for_no_runs(work_dir, timeout=5) == []
    assert time.monotonic() - disconnected < 5
    assert '"status": 499' in gateway.log_text()


def test_shutdown_lets_finishing_run_answer(
    fake: FakeAnthropic, start_server: StartServer, server_env: dict[str, str], work_dir: Path
) -> None:
    """SIGTERM mid-run: a run that ends within the grace still answers, then the server exits."""
    server = start_server(server_env, CCGATE_SHUTDOWN_GRACE_SECS=SHUTDOWN_GRACE_SECS)
    fake.reply(Slow("slow but complete answer", delay=0.8))

    with keyed_client(server) as client, run_in_background(client, {"prompt": "hi"}) as pending:
        wait_for_run_started(fake, work_dir)
        server.stop()
        response = pending.result()

    assert not server.killed, "the server ignored SIGTERM"
    assert response.status_code == 200, response.text
    assert response.json()["result"] == "slow but complete answer"
    assert processes_under(work_dir) == []


def test_shutdown_stops_hung_run_within_grace(
    fake: FakeAnthropic, start_server: StartServer, server_env: dict[str, str], work_dir: Path
) -> None:
    """SIGTERM with a run that never ends: exit within CCGATE_SHUTDOWN_GRACE_SECS, CLI killed."""
    server = start_server(
        server_env,
        CCGATE_SHUTDOWN_GRACE_SECS=SHUTDOWN_GRACE_SECS,
        CCGATE_KILL_GRACE_SECS=KILL_GRACE_SECS,
    )
    fake.reply(Hang())

    with keyed_client(server) as client, run_in_background(client, {"prompt": "hi"}):
        wait_for_run_started(fake, work_dir)
        started = time.monotonic()
        server.stop()
        elapsed = time.monotonic() - started

    assert processes_under(work_dir) == [], "the server left claude processes behind"
    limit = SHUTDOWN_GRACE_SECS + KILL_GRACE_SECS + SHUTDOWN_SLACK_SECS
    assert elapsed < limit, f"exit took {elapsed:.1f} s with a {SHUTDOWN_GRACE_SECS} s grace"


def test_shutdown_answers_waiting_client_in_native_shape(
    fake: FakeAnthropic, start_server: StartServer, server_env: dict[str, str], work_dir: Path
) -> None:
    """A sync caller whose run the shutdown stops gets a native 503, not a bare 500."""
    server = start_server(server_env, CCGATE_SHUTDOWN_GRACE_SECS=1, CCGATE_KILL_GRACE_SECS=1)
    fake.reply(Hang())

    with keyed_client(server) as client, run_in_background(client, {"prompt": "hi"}) as pending:
        wait_for_run_started(fake, work_dir)
        server.stop()
        response = pending.result()

    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["type"] == "shutting_down"
    assert error["request_id"] == response.headers["request-id"]
