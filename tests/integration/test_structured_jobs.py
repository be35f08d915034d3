"""Jobs with a JSON Schema: the answer validated as the job ends, one repair run in the same
job when it does not match, and ``schema_validation_failed`` with the raw text when the
repair does not match either."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from ccgate.errors import ERROR_KINDS
from ccgate.jobs import JobService, QueueLimits, Submission, request_to_json
from ccgate.runners.base import RunEvent, RunRequest
from ccgate.store import JobRecord, JobStatus, Store
from ccgate.structured import check_schema
from tests.support.fake_runner import FakeRunner

SCHEMA = check_schema(
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "people": {"type": "integer"}},
        "required": ["city", "people"],
    }
)
VALID = '{"city": "Oslo", "people": 709000}'
INVALID = '{"city": "Oslo", "people": "many"}'
MISMATCH = "at $.people: 'many' is not of type 'integer'"


@dataclass
class ScriptedRunner(FakeRunner):
    """A FakeRunner answering ``replies`` in turn (the last one from then on); a run whose
    reply is ``None`` blocks until ``released``."""

    replies: list[str | None] = field(default_factory=list)

    async def run(self, request: RunRequest) -> AsyncGenerator[RunEvent, None]:
        """The next scripted reply, as FakeRunner yields it."""
        reply = self.replies[min(len(self.started), len(self.replies) - 1)]
        self.block, self.reply = reply is None, reply
        async for event in super().run(request):
            yield event


@pytest.fixture
async def service_for(store: Store) -> AsyncIterator[Callable[[FakeRunner], Any]]:
    """Start a JobService over ``runner`` on the contract store; stopped at the end."""
    started: list[JobService] = []

    async def start(runner: FakeRunner) -> JobService:
        service = JobService(store, runner, QueueLimits(shutdown_grace_secs=0.2))
        await service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stop()


async def _schema_job(service: JobService, wait: bool = True) -> JobRecord:
    request = request_to_json(RunRequest.from_text("Oslo?", "sonnet"), json_schema=SCHEMA)
    assert request["response_format"] == "json" and request["json_schema"] == SCHEMA
    job, _ = await service.submit(Submission(None, "native", request))
    if not wait:
        return job
    async with asyncio.timeout(10):
        return await service.wait(job.id)


async def _events(service: JobService, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The job's stored events (what an SSE replay sends) as (event, data) pairs."""
    return [(e.type, e.data) for e in await service.store.events.after(job_id, 0)]


async def test_schema_job_valid_answer_completes_in_one_run(service_for: Any) -> None:
    """A fenced answer that matches completes at once with its value stored; no repair."""
    runner = ScriptedRunner(replies=[f"```json\n{VALID}\n```"])
    service = await service_for(runner)
    job = await _schema_job(service)
    assert job.status is JobStatus.COMPLETED and len(runner.started) == 1
    assert job.result_json == '{"city":"Oslo","people":709000}'
    assert job.result_parse_error is None


async def test_schema_job_invalid_answer_is_repaired_in_the_same_job(service_for: Any) -> None:
    """The repair run sees the first answer in its history and the validator's message in its
    prompt; the job completes with the repaired value and both runs' usage and cost."""
    runner = ScriptedRunner(replies=[INVALID, VALID])
    service = await service_for(runner)
    job = await _schema_job(service)
    assert job.status is JobStatus.COMPLETED and job.attempts == 1
    first, repair = runner.started
    assert repair.history == [
        {"role": "user", "content": first.content},
        {"role": "assistant", "content": [{"type": "text", "text": INVALID}]},
    ]
    assert MISMATCH in repair.prompt_text
    assert (job.result, job.result_json) == (VALID, '{"city":"Oslo","people":709000}')
    assert job.usage == {"input_tokens": 10, "output_tokens": 14}
    assert job.cost_usd == 0.002


async def test_schema_job_repair_is_announced_before_its_chunks(service_for: Any) -> None:
    """A ``repairing`` status event with the reason separates the two runs' chunks."""
    service = await service_for(ScriptedRunner(replies=[INVALID, VALID]))
    job = await _schema_job(service)
    events = await _events(service, job.id)
    names = [name for name, _ in events]
    at = names.index("status", 1)
    assert events[at][1] == {"status": "repairing", "reason": MISMATCH}
    after = "".join(data["text"] for name, data in events[at:] if name == "chunk")
    before = "".join(data["text"] for name, data in events[:at] if name == "chunk")
    assert (before, after) == (INVALID, VALID)


async def test_schema_job_invalid_twice_fails_with_the_raw_text(service_for: Any) -> None:
    """A repair that still does not match fails the job ``schema_validation_failed`` with the
    validator's message, the raw answer in ``result`` and both runs' usage."""
    runner = ScriptedRunner(replies=[INVALID, "no JSON, sorry"])
    service = await service_for(runner)
    job = await _schema_job(service)
    assert job.status is JobStatus.FAILED and len(runner.started) == 2
    assert job.error_type == "schema_validation_failed"
    assert ERROR_KINDS["schema_validation_failed"].status == 422
    assert job.error_message is not None and "not valid JSON" in job.error_message
    assert job.usage == {"input_tokens": 10, "output_tokens": 14} and job.cost_usd == 0.002
    # The view serves ``result`` as this text with ``result_parse_error``, never re-read.
    assert job.result == "no JSON, sorry" and job.result_json is None
    assert job.result_parse_error is not None
    assert job.result_parse_error.startswith("not valid JSON")


async def test_schema_job_cancelled_during_repair_ends_cancelled(service_for: Any) -> None:
    """A cancel that lands while the repair runs stops it like any run; the job is cancelled."""
    runner = ScriptedRunner(replies=[INVALID, None])
    service = await service_for(runner)
    job = await _schema_job(service, wait=False)
    async with asyncio.timeout(10):
        while len(runner.started) < 2:
            await asyncio.sleep(0.01)
    await service.cancel(job.id)
    async with asyncio.timeout(10):
        ended = await service.wait(job.id)
    assert ended.status is JobStatus.CANCELLED and runner.cancelled == 1
