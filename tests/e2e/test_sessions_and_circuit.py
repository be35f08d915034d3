"""Sessions that survive a restart (real CLI), and the API backend's circuit breaker."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.e2e.conftest import HTTP_TIMEOUT_SECS, StartServer
from tests.support.fake_anthropic import FAKE_API_KEY, Error, FakeAnthropic, Slow, Text

ADMIN = "e2e-admin-token-0123456789abcdefghijk"


def _texts(body: dict[str, object]) -> list[str]:
    out = []
    for message in body["messages"]:  # type: ignore[attr-defined]
        if message["role"] not in ("user", "assistant"):
            continue
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        out += [
            b["text"]
            for b in blocks
            if b.get("type") == "text" and not b["text"].startswith("<system-reminder>")
        ]
    return out


def test_sessions_resume_across_a_restart(
    start_server: StartServer, server_env: dict[str, str], fake: FakeAnthropic, home: Path
) -> None:
    """A session started before a restart continues after it: the upstream gets turn one."""
    server = start_server(server_env)
    key = server.create_key("sessions")
    headers = {"Authorization": f"Bearer {key}"}
    fake.reply(Text("Nice to meet you, Ada."))
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_SECS, headers=headers) as http:
        first = http.post("/api/v1/run", json={"prompt": "My name is Ada."}).json()
    session = first["session_id"]
    server.stop()
    server.start()
    fake.reply(Text("Your name is Ada."))
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_SECS, headers=headers) as http:
        second = http.post(
            "/api/v1/run", json={"prompt": "What is my name?", "session_id": session}
        )
        other_key = server.create_key("someone-else")
        stolen = http.post(
            "/api/v1/run",
            json={"prompt": "x", "session_id": session},
            headers={"Authorization": f"Bearer {other_key}"},
        )
    assert second.status_code == 200, second.text
    assert second.json()["session_id"] == session
    assert _texts(fake.message_requests()[-1].body) == [
        "My name is Ada.",
        "Nice to meet you, Ada.",
        "What is my name?",
    ]
    assert stolen.status_code == 404
    assert not list((home / ".claude" / "projects").glob("*/*.jsonl"))


def _ask(http: httpx.Client) -> httpx.Response:
    return http.post(
        "/v1/messages",
        json={"model": "sonnet", "max_tokens": 16, "messages": [{"role": "user", "content": "x"}]},
    )


def test_circuit_opens_probes_once_and_closes(
    start_server: StartServer, server_env: dict[str, str], fake: FakeAnthropic
) -> None:
    """After N upstream failures calls fail fast; after the cool-down exactly one of 50
    concurrent calls probes the upstream, and its success closes the circuit."""
    server = start_server(
        {
            **server_env,
            "CCGATE_BACKEND": "api",
            "ANTHROPIC_BASE_URL": fake.url,
            "ANTHROPIC_API_KEY": FAKE_API_KEY,
            "CCGATE_CIRCUIT_FAILURES": "3",
            "CCGATE_CIRCUIT_COOLDOWN_SECS": "1",
            "CCGATE_ADMIN_TOKEN": ADMIN,
        }
    )
    key = server.create_key("breaker")
    limits = httpx.Limits(max_connections=60)
    with httpx.Client(
        base_url=server.url, timeout=HTTP_TIMEOUT_SECS, limits=limits, headers={"x-api-key": key}
    ) as http:
        for _ in range(3):
            fake.reply(Error(529, "overloaded_error", "busy"))
            assert _ask(http).status_code == 503
        fast = _ask(http)
        assert fast.status_code == 503 and "Retry-After" in fast.headers
        assert fast.json()["error"]["type"] == "overloaded_error"
        assert len(fake.message_requests()) == 3
        admin = {"Authorization": f"Bearer {ADMIN}"}
        assert http.get("/admin/circuit", headers=admin).json()["state"] == "open"
        time.sleep(1.2)
        fake.reply(Slow("probe ok", delay=1.0))
        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(lambda _: _ask(http), range(50)))
        statuses = sorted(a.status_code for a in answers)
        assert statuses.count(200) == 1 and statuses.count(503) == 49
        assert len(fake.message_requests()) == 4
        assert _ask(http).status_code == 200
        assert http.get("/admin/circuit", headers=admin).json()["state"] == "closed"
