"""400 clients at once against two CLI slots: each gets an answer or a 429/503 to retry."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.reliability.gate import Gate, wait_until
from tests.support.server import processes_under

CLIENTS = 400
HTTP_TIMEOUT_SECS = 120.0
RETRYABLE = {429, 503}
# (path, body, the status of an accepted request): every door that starts a CLI run.
DOORS: tuple[tuple[str, dict[str, Any], int], ...] = (
    ("/api/v1/run", {"prompt": "hello"}, 200),
    ("/api/v1/jobs", {"prompt": "hello"}, 202),
    (
        "/v1/messages",
        {"model": "sonnet", "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]},
        200,
    ),
    (
        "/v1/chat/completions",
        {"model": "sonnet", "messages": [{"role": "user", "content": "hello"}]},
        200,
    ),
)


@pytest.fixture(scope="module")
def gate(start_gate: Callable[..., Gate]) -> Gate:
    """A server with two CLI slots and the default queue."""
    return start_gate(CCGATE_CONCURRENCY=2)


async def _burst(gate: Gate) -> list[httpx.Response | BaseException]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {gate.api_key}"}
    async with httpx.AsyncClient(
        base_url=gate.url, limits=limits, headers=headers, timeout=HTTP_TIMEOUT_SECS
    ) as client:
        calls = [
            client.post(path, json=body)
            for n in range(CLIENTS)
            for path, body, _ in [DOORS[n % len(DOORS)]]
        ]
        return await asyncio.gather(*calls, return_exceptions=True)


def _problem(response: httpx.Response | BaseException, accepted: int) -> str | None:
    if isinstance(response, BaseException):
        return f"no answer: {response!r}"
    if response.status_code == accepted:
        return None
    if response.status_code in RETRYABLE and response.headers.get("retry-after", "").isdigit():
        return None
    return f"{response.status_code} {response.headers.get('retry-after')!r} {response.text[:200]}"


async def test_overload_every_client_gets_an_answer_or_a_retry_after(gate: Gate) -> None:
    """Each of 400 simultaneous requests at four doors is answered, or refused with 429/503
    and Retry-After; afterwards the server runs, answers again, leaves no CLI process behind
    and has logged no error."""
    answers = await _burst(gate)
    problems = [
        problem
        for n, response in enumerate(answers)
        if (problem := _problem(response, DOORS[n % len(DOORS)][2])) is not None
    ]
    assert problems == [], Counter(problems).most_common(5)
    statuses = Counter(r.status_code for r in answers if isinstance(r, httpx.Response))
    assert statuses[200] > 0, statuses
    assert gate.is_alive()
    headers = {"Authorization": f"Bearer {gate.api_key}"}
    assert await asyncio.to_thread(
        wait_until,
        lambda: (
            httpx.post(
                f"{gate.url}/api/v1/run",
                json={"prompt": "after"},
                headers=headers,
                timeout=HTTP_TIMEOUT_SECS,
            ).status_code
            == 200
        ),
        60,
        0.5,
    )
    assert await asyncio.to_thread(wait_until, lambda: not processes_under(gate.work_dir), 60)
    assert gate.error_lines() == []
