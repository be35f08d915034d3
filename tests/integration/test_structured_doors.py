"""Structured outputs at the doors: ``json_schema`` on the native run and jobs, and the OpenAI
chat door's ``response_format: json_schema`` through the official SDK on both backends."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import openai
import pydantic
import pytest

from ccgate.api.app import create_app
from ccgate.api.deps import app_services
from ccgate.api.doors.async_jobs import JobBody, _request_hash
from ccgate.config import Settings
from ccgate.policy import KeyPolicy
from ccgate.runners.base import RunEvent, RunRequest
from tests.integration.conftest import Gateway
from tests.support.fake_anthropic import FAKE_API_KEY, FakeAnthropic, Text
from tests.support.fake_runner import FakeRunner

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "people": {"type": "integer"}},
    "required": ["city", "people"],
}
VALID = '{"city": "Oslo", "people": 709000}'
VALUE = {"city": "Oslo", "people": 709000}
INVALID = '{"city": "Oslo", "people": "many"}'
MISMATCH = "at $.people: 'many' is not of type 'integer'"
CHAT_FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}


class City(pydantic.BaseModel):
    """What ``parse()`` turns the answer into."""

    city: str
    people: int


@dataclass
class ScriptedRunner(FakeRunner):
    """A FakeRunner answering ``replies`` in turn (the last one from then on)."""

    replies: list[str] = field(default_factory=lambda: [VALID])

    async def run(self, request: RunRequest) -> AsyncGenerator[RunEvent, None]:
        """The next scripted reply, as FakeRunner yields it."""
        self.reply = self.replies[min(len(self.started), len(self.replies) - 1)]
        async for event in super().run(request):
            yield event


def _sdk(gateway: Gateway, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=key or gateway.key,
        base_url="http://ccgate.test/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gateway.app)),
    )


async def _native(gateway_factory: Callable[..., Any], *replies: str) -> tuple[Gateway, Any]:
    runner = ScriptedRunner(replies=list(replies))
    return await gateway_factory(runner), runner


# -- native run and jobs ---------------------------------------------------------------------


async def test_run_schema_valid_answer_is_the_value(gateway_factory: Callable[..., Any]) -> None:
    """A matching (fenced) answer comes back parsed; the model was told JSON only and the schema."""
    gateway, runner = await _native(gateway_factory, f"```json\n{VALID}\n```")
    response = await gateway.run({"prompt": "Oslo?", "json_schema": SCHEMA})
    assert response.status_code == 200, response.text
    assert response.json()["result"] == VALUE
    [asked] = runner.started
    assert "one JSON value only" in asked.append_system_prompt
    assert json.dumps(SCHEMA, separators=(",", ":")) in asked.append_system_prompt


async def test_run_schema_invalid_answer_is_repaired(gateway_factory: Callable[..., Any]) -> None:
    """One repair run fixes the answer; the job's usage is both runs'."""
    gateway, runner = await _native(gateway_factory, INVALID, VALID)
    response = await gateway.run(
        {"prompt": "Oslo?", "response_format": "json", "json_schema": SCHEMA}
    )
    assert response.status_code == 200, response.text
    assert response.json()["result"] == VALUE
    assert response.json()["usage"] == {"input_tokens": 10, "output_tokens": 14}
    assert len(runner.started) == 2 and MISMATCH in runner.started[1].prompt_text


async def test_run_schema_mismatch_twice_is_422_with_raw_text(
    gateway_factory: Callable[..., Any],
) -> None:
    """A repair that still does not match answers 422 with the message and the raw text."""
    gateway, _ = await _native(gateway_factory, INVALID, INVALID)
    response = await gateway.run({"prompt": "Oslo?", "json_schema": SCHEMA})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "schema_validation_failed" and MISMATCH in error["message"]
    assert error["raw_text"] == INVALID and error["job_id"].startswith("job_")


async def test_run_invalid_schema_is_400_and_spends_no_quota(
    gateway_factory: Callable[..., Any],
) -> None:
    """A schema ccgate will not use is a 400 naming json_schema; nothing runs, nothing is spent."""
    gateway, runner = await _native(gateway_factory, VALID)
    secret = (await app_services(gateway.app).keyring.create("one", KeyPolicy(rpd=1))).secret
    bad = {"prompt": "Oslo?", "json_schema": {"type": "object", "properties": {"a": {"type": 3}}}}
    response = await gateway.client.post("/api/v1/run", json=bad, headers=gateway.auth(secret))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "json_schema"
    assert response.json()["error"]["message"].startswith("json_schema: ")
    good = {"prompt": "Oslo?", "json_schema": SCHEMA}
    ok = await gateway.client.post("/api/v1/run", json=good, headers=gateway.auth(secret))
    assert ok.status_code == 200 and len(runner.started) == 1


async def test_run_schema_with_text_format_is_400(gateway_factory: Callable[..., Any]) -> None:
    """``response_format: "text"`` with a schema is refused, naming json_schema."""
    gateway, runner = await _native(gateway_factory, VALID)
    response = await gateway.run(
        {"prompt": "Oslo?", "response_format": "text", "json_schema": SCHEMA}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "json_schema" and not runner.started


async def _finished_job(gateway: Gateway, body: dict[str, Any]) -> dict[str, Any]:
    submitted = await gateway.client.post("/api/v1/jobs", json=body, headers=gateway.auth())
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    async with asyncio.timeout(10):
        while True:
            view = await gateway.client.get(f"/api/v1/jobs/{job_id}", headers=gateway.auth())
            if view.json()["status"] not in ("queued", "processing"):
                return view.json()  # type: ignore[no-any-return]
            await asyncio.sleep(0.02)


async def test_job_schema_repaired_shows_the_value(gateway_factory: Callable[..., Any]) -> None:
    """An async job with a schema completes with the repaired value in ``result``."""
    gateway, runner = await _native(gateway_factory, INVALID, VALID)
    job = await _finished_job(gateway, {"prompt": "Oslo?", "json_schema": SCHEMA})
    assert (job["status"], job["result"], len(runner.started)) == ("completed", VALUE, 2)


async def test_job_schema_mismatch_fails_with_the_raw_text(
    gateway_factory: Callable[..., Any],
) -> None:
    """The failed job shows the error type, the raw text in ``result`` and why."""
    gateway, _ = await _native(gateway_factory, INVALID, "no JSON")
    job = await _finished_job(gateway, {"prompt": "Oslo?", "json_schema": SCHEMA})
    assert job["status"] == "failed" and job["error"]["type"] == "schema_validation_failed"
    assert job["result"] == "no JSON" and job["result_parse_error"].startswith("not valid JSON")


async def test_job_invalid_schema_is_400_before_queueing(
    gateway_factory: Callable[..., Any],
) -> None:
    """An invalid schema on the jobs door is a 400 and queues nothing."""
    gateway, runner = await _native(gateway_factory, VALID)
    response = await gateway.client.post(
        "/api/v1/jobs",
        json={"prompt": "x", "json_schema": {"$ref": "https://example.com/s.json"}},
        headers=gateway.auth(),
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "json_schema"
    listed = await gateway.client.get("/api/v1/jobs", headers=gateway.auth())
    assert listed.json()["total"] == 0 and not runner.started


def test_job_request_hash_without_schema_is_unchanged() -> None:
    """A body without json_schema hashes as before the field existed (idempotent retries)."""
    body = JobBody.model_validate({"prompt": "x"})
    before = {k: v for k, v in body.model_dump(mode="json").items() if k != "json_schema"}
    canonical = json.dumps(before, sort_keys=True, separators=(",", ":"))
    assert _request_hash(body) == hashlib.sha256(canonical.encode()).hexdigest()
    assert _request_hash(
        JobBody.model_validate({"prompt": "x", "json_schema": SCHEMA})
    ) != _request_hash(body)


# -- the OpenAI chat door, on both backends --------------------------------------------------


@dataclass
class ChatBackend:
    """A gateway on one backend and a way to script its next answers."""

    gateway: Gateway
    answer: Callable[..., None]
    runs: Callable[[], list[Any]]


@pytest.fixture(params=["cli", "api"])
async def chat_backend(
    request: pytest.FixtureRequest,
    gateway_factory: Callable[..., Any],
    make_settings: Callable[..., Settings],
    fake: FakeAnthropic,
) -> AsyncIterator[ChatBackend]:
    """The CLI backend (a job, with a scripted fake runner) or the API backend (direct, on
    the fake Anthropic API)."""
    if request.param == "cli":
        runner = ScriptedRunner()

        def script(*texts: str) -> None:
            runner.replies = list(texts)

        yield ChatBackend(await gateway_factory(runner), script, lambda: runner.started)
        return

    def reply(*texts: str) -> None:
        for text in texts:
            fake.reply(Text(text, usage_in=5, usage_out=7))

    settings = make_settings(
        CCGATE_BACKEND="api", ANTHROPIC_BASE_URL=fake.url, ANTHROPIC_API_KEY=FAKE_API_KEY
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        secret = (await app_services(app).keyring.create("app")).secret
        yield ChatBackend(Gateway(app, client, secret), reply, fake.message_requests)


async def _chat(backend: ChatBackend, **kwargs: Any) -> Any:
    return await _sdk(backend.gateway).chat.completions.create(
        model="sonnet",
        messages=[{"role": "user", "content": "Oslo?"}],
        response_format=kwargs.pop("response_format", CHAT_FORMAT),
        **kwargs,
    )


async def test_chat_schema_valid_answer_is_the_json(chat_backend: ChatBackend) -> None:
    """A fenced matching answer comes back as the bare JSON value."""
    chat_backend.answer(f"```json\n{VALID}\n```")
    completion = await _chat(chat_backend)
    assert json.loads(completion.choices[0].message.content) == VALUE
    assert len(chat_backend.runs()) == 1


async def test_chat_schema_parse_into_a_pydantic_model(chat_backend: ChatBackend) -> None:
    """``client.chat.completions.parse(response_format=Model)`` works end to end."""
    chat_backend.answer(VALID)
    completion = await _sdk(chat_backend.gateway).chat.completions.parse(
        model="sonnet", messages=[{"role": "user", "content": "Oslo?"}], response_format=City
    )
    assert completion.choices[0].message.parsed == City(city="Oslo", people=709000)


async def test_chat_schema_invalid_answer_is_repaired(chat_backend: ChatBackend) -> None:
    """One repair run fixes the answer; the usage is both runs'."""
    chat_backend.answer(INVALID, VALID)
    completion = await _chat(chat_backend)
    assert json.loads(completion.choices[0].message.content) == VALUE
    assert completion.usage.completion_tokens == 14 and len(chat_backend.runs()) == 2


async def test_chat_schema_mismatch_raises_unprocessable(chat_backend: ChatBackend) -> None:
    """A repair that still does not match is 422 schema_validation_failed with the raw text."""
    chat_backend.answer(INVALID, INVALID)
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        await _chat(chat_backend)
    assert raised.value.code == "schema_validation_failed" and MISMATCH in raised.value.message
    assert isinstance(raised.value.body, dict) and raised.value.body["raw_text"] == INVALID


async def test_chat_invalid_schema_raises_bad_request(chat_backend: ChatBackend) -> None:
    """A schema ccgate will not use is a 400 naming it; nothing runs."""
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}
    with pytest.raises(openai.BadRequestError) as raised:
        await _chat(chat_backend, response_format=bad)
    assert raised.value.param == "response_format.json_schema.schema"
    assert not chat_backend.runs()


async def test_chat_schema_stream_sends_the_checked_json(chat_backend: ChatBackend) -> None:
    """Streamed, the repaired answer arrives whole after validation, then the finish chunk."""
    chat_backend.answer(INVALID, VALID)
    stream = await _chat(chat_backend, stream=True)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(text) == VALUE and chunks[-1].choices[0].finish_reason == "stop"


async def test_chat_schema_stream_mismatch_is_a_real_422(chat_backend: ChatBackend) -> None:
    """Streamed, a mismatch is an HTTP 422 before any chunk (nothing was sent yet)."""
    chat_backend.answer(INVALID, INVALID)
    with pytest.raises(openai.UnprocessableEntityError):
        await _chat(chat_backend, stream=True)
