"""Sessions on the native door: continue an earlier job's conversation, per key."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from ccgate.api.deps import app_services
from ccgate.clock import utcnow
from ccgate.store.schema import sessions
from tests.support.fake_runner import FakeRunner


async def test_sessions_second_job_receives_the_first_turn(
    gateway_factory: Callable[..., Any],
) -> None:
    """A job naming an earlier job's session_id runs with that question and answer first."""
    runner = FakeRunner()
    gateway = await gateway_factory(runner)
    first = (await gateway.run({"prompt": "my name is Ada", "system_prompt": "be brief"})).json()
    second = await gateway.run({"prompt": "what is my name?", "session_id": first["session_id"]})
    assert second.status_code == 200
    assert second.json()["session_id"] == first["session_id"]
    request = runner.started[-1]
    assert request.history == [
        {"role": "user", "content": [{"type": "text", "text": "my name is Ada"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "reply: my name is Ada"}]},
    ]
    assert request.system_prompt == "be brief"
    assert request.content == [{"type": "text", "text": "what is my name?"}]


async def test_sessions_grow_turn_by_turn(gateway_factory: Callable[..., Any]) -> None:
    """A third job in the same session sees both earlier exchanges, in order."""
    runner = FakeRunner()
    gateway = await gateway_factory(runner)
    session = (await gateway.run({"prompt": "one"})).json()["session_id"]
    await gateway.run({"prompt": "two", "session_id": session})
    await gateway.run({"prompt": "three", "session_id": session})
    texts = [m["content"][0]["text"] for m in runner.started[-1].history]
    assert texts == ["one", "reply: one", "two", "reply: two"]


async def test_sessions_of_another_key_are_not_found(gateway_factory: Callable[..., Any]) -> None:
    """Another key cannot continue (or learn about) a session: 404, nothing runs."""
    runner = FakeRunner()
    gateway = await gateway_factory(runner)
    session = (await gateway.run({"prompt": "secret"})).json()["session_id"]
    other = (await app_services(gateway.app).keyring.create("other")).secret
    response = await gateway.client.post(
        "/api/v1/run",
        json={"prompt": "what did they say?", "session_id": session},
        headers=gateway.auth(other),
    )
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "session_id"
    assert len(runner.started) == 1


async def test_sessions_expired_ones_are_not_found_and_get_deleted(
    gateway_factory: Callable[..., Any],
) -> None:
    """A session past its TTL answers 404 and the cleanup sweep deletes it."""
    gateway = await gateway_factory()
    session = (await gateway.run({"prompt": "old"})).json()["session_id"]
    store = app_services(gateway.app).store
    past = utcnow() - timedelta(seconds=1)
    await store.db.write(
        lambda conn: conn.execute(
            sessions.update().where(sessions.c.id == session).values(expires_at=past)
        )
    )
    response = await gateway.run({"prompt": "again", "session_id": session})
    assert response.status_code == 404
    assert await app_services(gateway.app).sessions.delete_expired(utcnow()) == 1
    count = await store.db.read(
        lambda conn: conn.execute(sa.select(sa.func.count()).select_from(sessions)).scalar()
    )
    assert count == 0


async def test_sessions_async_jobs_continue_them_too(gateway_factory: Callable[..., Any]) -> None:
    """POST /api/v1/jobs accepts session_id and the finished job carries it."""
    runner = FakeRunner()
    gateway = await gateway_factory(runner)
    session = (await gateway.run({"prompt": "first"})).json()["session_id"]
    submitted = await gateway.client.post(
        "/api/v1/jobs", json={"prompt": "second", "session_id": session}, headers=gateway.auth()
    )
    assert submitted.status_code == 202
    job_id = submitted.json()["job_id"]
    await app_services(gateway.app).jobs.wait(job_id)
    job = (await gateway.client.get(f"/api/v1/jobs/{job_id}", headers=gateway.auth())).json()
    assert job["session_id"] == session
    assert [m["role"] for m in runner.started[-1].history] == ["user", "assistant"]


async def test_sessions_can_be_read_and_deleted_by_their_key(
    gateway_factory: Callable[..., Any],
) -> None:
    """GET shows the turns; DELETE forgets them; another key gets 404 for both."""
    gateway = await gateway_factory()
    session = (await gateway.run({"prompt": "remember 7"})).json()["session_id"]
    other = gateway.auth((await app_services(gateway.app).keyring.create("other")).secret)
    shown = await gateway.client.get(f"/api/v1/sessions/{session}", headers=gateway.auth())
    assert shown.json()["turns"] == 1
    assert shown.json()["messages"][1]["content"][0]["text"] == "reply: remember 7"
    assert (
        await gateway.client.get(f"/api/v1/sessions/{session}", headers=other)
    ).status_code == 404
    assert (
        await gateway.client.delete(f"/api/v1/sessions/{session}", headers=other)
    ).status_code == 404
    assert (
        await gateway.client.delete(f"/api/v1/sessions/{session}", headers=gateway.auth())
    ).status_code == 204
    again = await gateway.run({"prompt": "what number?", "session_id": session})
    assert again.status_code == 404
