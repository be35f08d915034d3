"""A job's answer as stored when the job ends: JSON answers are read once, there, and every
view serves that reading; hostile answers neither stall the gateway nor jam the job."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ccgate import jsonanswer
from ccgate.api.deps import app_services
from ccgate.clock import utcnow
from ccgate.runners.base import RunError
from ccgate.store import JobStatus, Store
from tests.integration.conftest import Gateway
from tests.support.fake_runner import FakeRunner
from tests.support.webhook_receiver import WebhookReceiver

# An unclosed fence over 1,200 blank lines: seconds of backtracking for a regex reader.
HOSTILE = "```\n" + " \n" * 1200 + "no closing fence"


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every answer handed to the JSON reader, in order."""
    seen: list[str] = []
    real_read = jsonanswer.read_json_answer

    def recording_read(
        text: str, max_chars: int = jsonanswer.MAX_ANSWER_CHARS
    ) -> jsonanswer.JsonAnswer:
        seen.append(text)
        return real_read(text, max_chars)

    monkeypatch.setattr(jsonanswer, "read_json_answer", recording_read)
    return seen


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """A webhook receiver on loopback."""
    started = await WebhookReceiver().start()
    yield started
    await started.close()


async def _json_job(gw: Gateway, **extra: Any) -> str:
    response = await gw.client.post(
        "/api/v1/jobs", headers=gw.auth(), json={"prompt": "x", "response_format": "json", **extra}
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    async with asyncio.timeout(10):
        await app_services(gw.app).jobs.wait(job_id)
    return job_id


def _sse_result(stream: str) -> dict[str, Any]:
    block = next(b for b in stream.split("\n\n") if "event: result" in b)
    data: dict[str, Any] = json.loads(block.split("data: ", 1)[1])
    return data


async def test_json_job_hostile_answer_is_read_once_and_served_from_the_store(
    gateway_factory: Any, reads: list[str]
) -> None:
    """A fence-bomb answer is read once as the job ends; GET, list and SSE reuse that."""
    gw = await gateway_factory(FakeRunner(reply=HOSTILE))
    job_id = await _json_job(gw)
    assert reads == [HOSTILE]
    views = [
        (await gw.client.get(f"/api/v1/jobs/{job_id}", headers=gw.auth())).json() for _ in range(2)
    ]
    views.append((await gw.client.get("/api/v1/jobs", headers=gw.auth())).json()["jobs"][0])
    views.append(
        _sse_result((await gw.client.get(f"/api/v1/jobs/{job_id}/sse", headers=gw.auth())).text)
    )
    for view in views:
        assert view["result"] == HOSTILE
        assert view["result_parse_error"].startswith("not valid JSON")
    assert reads == [HOSTILE]


async def test_json_job_value_is_stored_and_sent_to_its_webhook(
    gateway_factory: Any, reads: list[str], receiver: WebhookReceiver
) -> None:
    """The parsed value is stored with the job, and the webhook carries it without a re-read."""
    gw = await gateway_factory(
        FakeRunner(reply='```json\n{"colors": ["red"]}\n```'),
        CCGATE_OUTBOUND_ALLOW="127.0.0.1",
        CCGATE_WEBHOOK_SECRET="s" * 32,
    )
    job_id = await _json_job(gw, callback_url=receiver.url)
    stored = await app_services(gw.app).store.jobs.get(job_id)
    assert stored is not None
    assert (stored.result_json, stored.result_parse_error) == ('{"colors":["red"]}', None)
    async with asyncio.timeout(10):
        while not receiver.received:
            await asyncio.sleep(0.02)
    assert json.loads(receiver.received[0].body)["result"] == {"colors": ["red"]}
    assert len(reads) == 1


@pytest.mark.parametrize("answer", ["NaN", "[1e999]", '"\\ud800"', "[" * 5000])
async def test_json_job_value_that_cannot_be_sent_back_is_text_with_a_reason(
    gateway_factory: Any, answer: str
) -> None:
    """NaN, out-of-range numbers, lone surrogates and deep nesting answer 200 as text."""
    gw = await gateway_factory(FakeRunner(reply=answer))
    job_id = await _json_job(gw)
    response = await gw.client.get(f"/api/v1/jobs/{job_id}", headers=gw.auth())
    assert response.status_code == 200
    assert response.json()["result"] == answer
    assert response.json()["result_parse_error"].startswith("not valid JSON")


async def _legacy_job(gw: Gateway, job_id: str, answer: str) -> dict[str, Any]:
    """A JSON job ended without a stored reading, as an older version stored it; its view."""
    store: Store = app_services(gw.app).store
    key = await store.keys.by_name("app")
    assert key is not None
    await store.jobs.insert(
        job_id=job_id,
        key_id=key.id,
        door="native",
        model="sonnet",
        request={"response_format": "json"},
        metadata=None,
        now=utcnow(),
    )
    assert await store.jobs.transition(job_id, JobStatus.PROCESSING)
    assert await store.jobs.finish(job_id, JobStatus.COMPLETED, now=utcnow(), result=answer)
    view: dict[str, Any] = (await gw.client.get(f"/api/v1/jobs/{job_id}", headers=gw.auth())).json()
    return view


async def test_json_job_stored_before_answers_were_read_at_the_end_still_renders(
    gateway: Gateway, reads: list[str]
) -> None:
    """A job ended without a stored reading (an older version) is parsed when shown."""
    view = await _legacy_job(gateway, "job_legacy", 'Sure: {"n": 1}')
    assert view["result"] == {"n": 1} and "result_parse_error" not in view
    assert reads == ['Sure: {"n": 1}']


async def test_json_job_stored_before_with_a_long_answer_is_not_parsed_on_view(
    gateway: Gateway,
) -> None:
    """Such a job's answer is read on view only up to MAX_ANSWER_CHARS_ON_VIEW; past it, text."""
    answer = json.dumps(["x" * jsonanswer.MAX_ANSWER_CHARS_ON_VIEW])
    view = await _legacy_job(gateway, "job_long", answer)
    assert view["result"] == answer
    assert str(jsonanswer.MAX_ANSWER_CHARS_ON_VIEW) in view["result_parse_error"]


async def test_compat_run_serves_the_answer_read_when_the_job_ended(
    gateway_factory: Any, reads: list[str]
) -> None:
    """``POST /run`` reads any answer as JSON once, at the end, and answers the value."""
    gw = await gateway_factory(FakeRunner(reply='```\n{"a": [1, 2]}\n```'))
    response = await gw.client.post("/run", json={"prompt": "x"}, headers=gw.auth())
    assert response.status_code == 200, response.text
    assert response.json()["result"] == {"a": [1, 2]}
    assert len(reads) == 1


async def test_job_table_keeps_the_answer_reading_on_every_backend(store: Store) -> None:
    """result_json and result_parse_error round-trip on SQLite and PostgreSQL."""
    readings: tuple[tuple[str, dict[str, Any]], ...] = (
        ("job_v", {"result_json": '{"a":[1,"é"]}'}),
        ("job_e", {"result_parse_error": "not valid JSON: x"}),
    )
    for job_id, reading in readings:
        await store.jobs.insert(
            job_id=job_id,
            key_id=None,
            door="native",
            model="sonnet",
            request={"response_format": "json"},
            metadata=None,
            now=utcnow(),
        )
        assert await store.jobs.transition(job_id, JobStatus.PROCESSING)
        ended = await store.jobs.finish(
            job_id, JobStatus.COMPLETED, now=utcnow(), result="answer", **reading
        )
        assert ended is not None
    value, error = await store.jobs.get("job_v"), await store.jobs.get("job_e")
    assert value is not None and error is not None
    assert (value.result_json, value.result_parse_error) == ('{"a":[1,"é"]}', None)
    assert (error.result_json, error.result_parse_error) == (None, "not valid JSON: x")


async def test_job_answer_with_nul_characters_completes_on_every_backend(
    db_gateway_factory: Any,
) -> None:
    """NUL in an answer (which PostgreSQL text cannot hold) is stored as U+FFFD; the job ends."""
    gw = await db_gateway_factory(FakeRunner(reply='{"a": "x\x00y"}\x00'))
    job_id = await _json_job(gw)
    view = (await gw.client.get(f"/api/v1/jobs/{job_id}", headers=gw.auth())).json()
    assert view["status"] == "completed"
    assert view["result"] == {"a": "x\ufffdy"}


async def test_job_error_with_nul_characters_fails_cleanly_on_every_backend(
    db_gateway_factory: Any,
) -> None:
    """A failure message holding NUL is stored with U+FFFD instead; the job ends as failed."""
    gw = await db_gateway_factory(FakeRunner(error=RunError("cli_error", "crash\x00dump")))
    job_id = await _json_job(gw)
    view = (await gw.client.get(f"/api/v1/jobs/{job_id}", headers=gw.auth())).json()
    assert view["status"] == "failed"
    assert view["error"] == {"type": "cli_error", "message": "crash\ufffddump"}
