"""Issue 15's API surface through the official SDKs against one real `ccgate serve` per
backend: Message Batches, the Responses API, structured outputs, and the usage they leave.

CLI backend: the real pinned claude CLI talks to the fake Anthropic API. API backend: ccgate
talks to the same fake with the operator's key. Each backend's server is started once for the
module; every test takes a fresh key and starts with an empty script of upstream replies.
Batches run one request at a time (`CCGATE_BATCH_INFLIGHT=1`) so the scripted replies meet
their requests in order.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import service_missing
from tests.e2e.conftest import system_texts, user_texts, wait_until
from tests.support.fake_anthropic import Error, FakeAnthropic, Slow, Text, cli_env
from tests.support.real_claude import find_real_claude
from tests.support.server import ServerProcess, processes_under

BACKENDS = [pytest.param("cli", marks=pytest.mark.real_cli), "api"]
ENDED_WITHIN_SECS = 90.0
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "people": {"type": "integer"}},
    "required": ["city", "people"],
    "additionalProperties": False,
}
OSLO = '{"city": "Oslo", "people": 709000}'


class City(BaseModel):
    """The structured answer the tests ask for."""

    city: str
    people: int


@dataclass(frozen=True)
class Surface:
    """One backend's running server and the fake upstream it (or its CLI) talks to."""

    backend: str
    server: ServerProcess
    fake: FakeAnthropic
    clients: list[anthropic.Anthropic | openai.OpenAI] = field(default_factory=list)

    def key(self, name: str, *args: str) -> str:
        """A fresh key of the server (``args``: ``ccgate keys create`` options)."""
        if not args:
            return self.server.create_key(name)
        done = self.server.cli("keys", "create", name, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    def anthropic(self, key: str) -> anthropic.Anthropic:
        """The official Anthropic SDK pointed at the server."""
        client = anthropic.Anthropic(
            base_url=self.server.url, api_key=key, max_retries=0, timeout=60
        )
        self.clients.append(client)
        return client

    def openai(self, key: str) -> openai.OpenAI:
        """The official OpenAI SDK pointed at the server."""
        client = openai.OpenAI(
            base_url=f"{self.server.url}/v1", api_key=key, max_retries=0, timeout=60
        )
        self.clients.append(client)
        return client

    def close_clients(self) -> None:
        """Close every SDK client a test made (their pooled connections)."""
        while self.clients:
            self.clients.pop().close()

    def usage(self, key: str, **params: str) -> list[dict[str, Any]]:
        """The key's rows of ``GET /api/v1/usage``."""
        response = httpx.get(
            f"{self.server.url}/api/v1/usage",
            params=params,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert isinstance(data, list)
        return data


@pytest.fixture(scope="module")
def surface_fake() -> Iterator[FakeAnthropic]:
    """One fake Anthropic API for the module's servers."""
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(scope="module", params=BACKENDS)
def surface(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    surface_fake: FakeAnthropic,
) -> Iterator[Surface]:
    """A `ccgate serve` on the CLI backend (real CLI) or the API backend, for the module."""
    backend = str(request.param)
    root = tmp_path_factory.mktemp(f"surface-{backend}")
    home, work = root / "home", root / "work"
    home.mkdir()
    work.mkdir()
    env = {
        **cli_env(surface_fake, home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "CCGATE_WORK_DIR": str(work),
        "CCGATE_LOG_LEVEL": "info",
        # The CLI would retry an upstream error and meet the next scripted reply.
        "CCGATE_UPSTREAM_RETRIES": "0",
        "CCGATE_BATCH_INFLIGHT": "1",
    }
    if backend == "cli":
        claude = find_real_claude()
        if claude is None:
            service_missing("the real claude CLI is not installed: set CCGATE_TEST_CLAUDE")
        env["CCGATE_CLAUDE_PATH"] = str(claude)
    else:
        env["CCGATE_BACKEND"] = "api"
    server = ServerProcess(env, root / "server").start()
    try:
        yield Surface(backend, server, surface_fake)
    finally:
        server.stop()
        print(f"--- log of ccgate serve ({backend}) ---\n{server.log_text()}")
        for pid in processes_under(work):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(autouse=True)
def fresh_script(surface: Surface) -> Iterator[None]:
    """Every test starts with no scripted replies and no recorded requests; its SDK clients
    are closed after it."""
    surface.fake.reset()
    surface.fake.default = Text("Hello from fake")
    yield
    surface.close_clients()
    surface.fake.reset()


def _ask(custom_id: str, text: str, model: str = "sonnet") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "params": {
            "model": model,
            "max_tokens": 32,
            "messages": [{"role": "user", "content": text}],
        },
    }


def _until_ended(client: anthropic.Anthropic, batch_id: str) -> Any:
    def check() -> bool:
        return client.messages.batches.retrieve(batch_id).processing_status == "ended"

    assert wait_until(check, ENDED_WITHIN_SECS, interval=0.2), "the batch never ended"
    return client.messages.batches.retrieve(batch_id)


def _ran(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Requests, output tokens and errors of the usage rows with a model (turns that ran,
    not the calls that only read or store)."""
    ran = [r for r in rows if r["model"] is not None]
    return {name: sum(r[name] for r in ran) for name in ("requests", "output_tokens", "errors")}


def _until_usage(surface: Surface, key: str, check: Callable[[list[dict[str, Any]]], bool]) -> Any:
    """The key's usage rows by model once ``check`` holds (audit rows are written in batches)."""
    rows: list[dict[str, Any]] = []

    def ready() -> bool:
        rows[:] = surface.usage(key, group_by="model")
        return check(rows)

    assert wait_until(ready, 10, interval=0.1), rows
    return rows


def _turns(body: Any) -> list[tuple[str, str]]:
    """(role, text) of the user and assistant text blocks upstream got, without the CLI's
    own reminders."""
    out = []
    for message in body["messages"]:
        if message["role"] not in ("user", "assistant"):
            continue
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks:
            text = block.get("text", "")
            if block.get("type") == "text" and not text.startswith("<system-reminder>"):
                out.append((message["role"], text))
    return out


def test_surface_batch_results_list_usage_and_delete(surface: Surface) -> None:
    """A 3-request batch with one upstream failure ends with 2 succeeded and 1 errored results
    under their custom_ids, is listed, is counted in usage per request, then is deleted."""
    key = surface.key("batch")
    client = surface.anthropic(key)
    surface.fake.reply(Text("first answer"))
    # A 500, not a 400: the real CLI sends a request refused with a 400 a second time.
    surface.fake.reply(Error(500, "api_error", "upstream broke"))
    surface.fake.reply(Text("third answer"))
    first = _ask("q-0", "one")
    first["params"]["system"] = "answer tersely"
    batch = client.messages.batches.create(
        requests=[first, _ask("q-1", "two"), _ask("q-2", "three")]  # type: ignore[list-item]
    )
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 3
    ended = _until_ended(client, batch.id)
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (2, 1)
    assert ended.results_url is not None and ended.ended_at is not None
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert sorted(results) == ["q-0", "q-1", "q-2"]
    assert results["q-0"].type == "succeeded" and results["q-2"].type == "succeeded"
    assert results["q-0"].message.content[0].text == "first answer"  # type: ignore[union-attr]
    assert results["q-2"].message.content[0].text == "third answer"  # type: ignore[union-attr]
    assert results["q-1"].type == "errored" and results["q-1"].error.error.type
    upstream = surface.fake.message_requests()[0].body
    assert user_texts(upstream)[-1] == "one"
    assert any("answer tersely" in text for text in system_texts(upstream))
    assert batch.id in [b.id for b in client.messages.batches.list()]
    # One row per request that ran: 2 output tokens per answer (one per delta), 1 error.
    rows = _until_usage(surface, key, lambda rows: _ran(rows)["requests"] >= 3)
    assert _ran(rows) == {"requests": 3, "output_tokens": 4, "errors": 1}, rows
    assert client.messages.batches.delete(batch.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)


def test_surface_batch_create_with_a_forbidden_model_is_403(surface: Surface) -> None:
    """A batch naming a model the key may not use is refused at create (PermissionDenied)."""
    key = surface.key("haiku-only", "--model", "haiku")
    client = surface.anthropic(key)
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        client.messages.batches.create(
            requests=[_ask("ok", "one", model="haiku"), _ask("no", "two")]  # type: ignore[list-item]
        )
    assert "custom_id 'no'" in str(caught.value)
    assert not client.messages.batches.list().data
    assert not surface.fake.message_requests()


def test_surface_batch_cancel_while_running(surface: Surface) -> None:
    """Cancelling a batch whose first request is running ends it, the rest canceled."""
    key = surface.key("cancel")
    client = surface.anthropic(key)
    for _ in range(3):
        surface.fake.reply(Slow("a b c d e f g h", delay=0.5))
    batch = client.messages.batches.create(
        requests=[_ask(f"c-{i}", f"slow {i}") for i in range(3)]  # type: ignore[misc]
    )
    assert wait_until(lambda: bool(surface.fake.message_requests()), 30), "nothing ran"
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status in ("canceling", "ended")
    assert canceling.cancel_initiated_at is not None
    ended = _until_ended(client, batch.id)
    counts = ended.request_counts
    assert counts.canceled >= 2 and counts.processing == 0, counts
    assert counts.canceled + counts.succeeded + counts.errored == 3, counts
    results = {r.custom_id: r.result.type for r in client.messages.batches.results(batch.id)}
    assert results["c-1"] == results["c-2"] == "canceled", results
    assert len(surface.fake.message_requests()) == 1


def test_surface_responses_create_continue_retrieve_and_delete(surface: Surface) -> None:
    """A string input with instructions, then message items continuing it by
    previous_response_id (upstream sees the earlier turn); retrieve, delete, then 404; a
    conversation of items with store false is not kept; each counted in the key's usage."""
    key = surface.key("responses")
    client = surface.openai(key)
    surface.fake.reply(Text("first answer"))
    first = client.responses.create(
        model="sonnet", input="first question", instructions="answer in one line"
    )
    assert first.output_text == "first answer" and first.status == "completed"
    assert first.usage is not None and first.usage.total_tokens > 0
    upstream = surface.fake.message_requests()[-1].body
    assert any("answer in one line" in text for text in system_texts(upstream))
    surface.fake.reply(Text("second answer"))
    second = client.responses.create(
        model="sonnet",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "second question"}]}],
        previous_response_id=first.id,
    )
    assert second.output_text == "second answer"
    turns = _turns(surface.fake.message_requests()[-1].body)
    earlier = [("user", "first question"), ("assistant", "first answer")]
    assert [t for t in turns if t in earlier] == earlier
    assert turns.index(earlier[1]) < turns.index(("user", "second question"))
    assert client.responses.retrieve(first.id).output_text == "first answer"
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    surface.fake.reply(Text("unstored"))
    unstored = client.responses.create(
        model="sonnet",
        input=[
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
        ],
        store=False,
    )
    assert _turns(surface.fake.message_requests()[-1].body)[-3:] == [
        ("user", "q1"),
        ("assistant", "a1"),
        ("user", "q2"),
    ]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    rows = _until_usage(surface, key, lambda rows: _ran(rows)["requests"] >= 3)
    assert _ran(rows) == {"requests": 3, "output_tokens": 5, "errors": 0}, rows
    assert all(r["input_tokens"] > 0 for r in rows if r["model"] is not None), rows


def test_surface_responses_streams_through_both_sdk_calls(surface: Surface) -> None:
    """create(stream=True) yields created, text deltas and completed with usage, and
    responses.stream() assembles the final Response, stored and continued like any other;
    the streamed responses' tokens reach the key's usage."""
    key = surface.key("stream")
    client = surface.openai(key)
    surface.fake.reply(Slow("one two three", delay=0.1, chunks=3))
    events = list(client.responses.create(model="sonnet", input="count", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "one two three"
    completed = events[-1]
    assert completed.type == "response.completed" and completed.response.usage is not None
    assert completed.response.usage.output_tokens > 0
    surface.fake.reply(Text("streamed helper"))
    with client.responses.stream(model="sonnet", input="again") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == "streamed helper" == final.output_text
    assert client.responses.retrieve(final.id).output_text == "streamed helper"
    surface.fake.reply(Text("continued"))
    client.responses.create(model="sonnet", input="and then", previous_response_id=final.id)
    turns = _turns(surface.fake.message_requests()[-1].body)
    assert ("assistant", "streamed helper") in turns
    # Output tokens as the fake counts them: one per delta (3 + 2 + 1).
    rows = _until_usage(surface, key, lambda rows: _ran(rows)["output_tokens"] >= 6)
    assert _ran(rows) == {"requests": 3, "output_tokens": 6, "errors": 0}, rows


def test_surface_responses_parse_text_format(surface: Surface) -> None:
    """responses.parse with a pydantic text_format sends a json_schema and parses the answer,
    a fenced one included."""
    client = surface.openai(surface.key("parse"))
    surface.fake.reply(Text(f"```json\n{OSLO}\n```"))
    parsed = client.responses.parse(model="sonnet", input="Oslo?", text_format=City)
    assert parsed.output_parsed == City(city="Oslo", people=709000)
    surface.fake.reply(Text(OSLO))
    with client.responses.stream(model="sonnet", input="Oslo?", text_format=City) as stream:
        final = stream.get_final_response()
    assert final.output_parsed == City(city="Oslo", people=709000)


def test_surface_responses_schema_mismatch_twice_is_422(surface: Surface) -> None:
    """responses.parse whose answer misses the schema twice raises UnprocessableEntityError
    with the raw text of the last answer."""
    client = surface.openai(surface.key("parse-422"))
    surface.fake.reply(Text('{"city": "Oslo", "people": "many"}'))
    surface.fake.reply(Text('{"city": "Oslo", "people": "lots"}'))
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.responses.parse(model="sonnet", input="Oslo?", text_format=City)
    assert caught.value.code == "schema_validation_failed"
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["raw_text"] == '{"city": "Oslo", "people": "lots"}'


def test_surface_native_run_json_schema(surface: Surface) -> None:
    """POST /api/v1/run with json_schema answers the validated value, the schema told to
    the model."""
    key = surface.key("native")
    surface.fake.reply(Text(OSLO))
    response = httpx.post(
        f"{surface.server.url}/api/v1/run",
        json={"prompt": "Oslo?", "json_schema": SCHEMA},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["result"] == {"city": "Oslo", "people": 709000}
    upstream = surface.fake.message_requests()[-1].body
    told = [*system_texts(upstream), *user_texts(upstream)]
    assert any('"people"' in text for text in told)


def test_surface_chat_parse_and_repair(surface: Surface) -> None:
    """chat.completions.parse(response_format=City) gets a value the SDK parses; a first
    mismatch is repaired by one more upstream call."""
    client = surface.openai(surface.key("chat-parse"))
    surface.fake.reply(Text('{"city": "Oslo", "people": "many"}'))
    surface.fake.reply(Text(OSLO))
    completion = client.chat.completions.parse(
        model="sonnet",
        messages=[{"role": "user", "content": "Oslo?"}],
        response_format=City,
    )
    assert completion.choices[0].message.parsed == City(city="Oslo", people=709000)
    assert len(surface.fake.message_requests()) == 2
    surface.fake.reply(Text(OSLO))
    with client.chat.completions.stream(
        model="sonnet", messages=[{"role": "user", "content": "Oslo?"}], response_format=City
    ) as stream:
        streamed = stream.get_final_completion()
    assert streamed.choices[0].message.parsed == City(city="Oslo", people=709000)


def test_surface_chat_schema_mismatch_twice_is_422(surface: Surface) -> None:
    """Two answers that do not match raise UnprocessableEntityError, schema_validation_failed,
    with the raw text of the last answer."""
    client = surface.openai(surface.key("chat-422"))
    surface.fake.reply(Text('{"city": "Oslo", "people": "many"}'))
    surface.fake.reply(Text('{"city": "Oslo", "people": "lots"}'))
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.parse(
            model="sonnet",
            messages=[{"role": "user", "content": "Oslo?"}],
            response_format=City,
        )
    error = caught.value.body
    assert isinstance(error, dict), error
    assert caught.value.code == "schema_validation_failed"
    assert error["raw_text"] == '{"city": "Oslo", "people": "lots"}'
    assert "at $.people: 'lots' is not of type 'integer'" in caught.value.message
