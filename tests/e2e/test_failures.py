"""How runs fail through the real server and CLI: timeouts and upstream errors."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import wait_for_no_runs
from tests.support.fake_anthropic import FAKE_API_KEY, Error, FakeAnthropic, Hang

pytestmark = pytest.mark.real_cli

MakeClient = Callable[..., httpx.Client]


def test_timeout_wall_clock_answers_504(
    fake: FakeAnthropic, client: httpx.Client, work_dir: Path
) -> None:
    """`timeout_secs` on a hung upstream ends in 504 `timeout` (wall-clock), CLI killed."""
    fake.reply(Hang())

    started = time.monotonic()
    response = client.post("/api/v1/run", json={"prompt": "hang on", "timeout_secs": 2})
    elapsed = time.monotonic() - started

    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert error["type"] == "timeout"
    assert "wall-clock" in error["message"]
    assert 2 <= elapsed < 15
    assert fake.message_requests(), "the CLI never reached the upstream"
    assert wait_for_no_runs(work_dir) == []


def test_timeout_idle_answers_504(
    fake: FakeAnthropic, make_client: MakeClient, work_dir: Path
) -> None:
    """A run silent for CCGATE_IDLE_TIMEOUT_SECS ends in 504 `timeout` (idle), CLI killed."""
    client = make_client(CCGATE_IDLE_TIMEOUT_SECS=2)
    fake.reply(Hang())

    started = time.monotonic()
    response = client.post("/api/v1/run", json={"prompt": "hang on"})
    elapsed = time.monotonic() - started

    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert error["type"] == "timeout"
    assert "idle" in error["message"]
    assert 2 <= elapsed < 15
    assert wait_for_no_runs(work_dir) == []


@pytest.mark.parametrize(
    ("upstream", "error_type", "status"),
    [
        (Error(401, "authentication_error", "invalid x-api-key"), "upstream_auth_error", 502),
        (
            Error(429, "rate_limit_error", "Number of requests over limit"),
            "upstream_rate_limited",
            429,
        ),
        (Error(529, "overloaded_error", "Overloaded"), "upstream_overloaded", 503),
    ],
    ids=["401", "429", "529"],
)
def test_upstream_error_maps_to_native_error(
    upstream: Error, error_type: str, status: int, fake: FakeAnthropic, make_client: MakeClient
) -> None:
    """An upstream 401/429/529 answers fast with its documented type, in the native shape."""
    client = make_client(CCGATE_UPSTREAM_RETRIES=0)
    fake.reply(upstream)

    started = time.monotonic()
    response = client.post("/api/v1/run", json={"prompt": "hi"})

    assert time.monotonic() - started < 20
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"]
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["request_id"] == response.headers["request-id"]
    assert str(upstream.status) in error["message"]
    assert FAKE_API_KEY not in response.text
    assert len(fake.message_requests()) == 1, "the CLI retried despite CCGATE_UPSTREAM_RETRIES=0"
