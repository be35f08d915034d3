"""Every door on the API backend, in process, against the fake Anthropic API."""

from __future__ import annotations

from typing import Any

from ccgate.api.deps import app_services
from tests.integration.conftest import Gateway
from tests.support.fake_anthropic import FAKE_API_KEY, Echo, FakeAnthropic, Text


async def test_api_backend_native_sessions_send_the_history_upstream(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """A native job runs against the API; a continued session sends the earlier turns."""
    fake.reply(Text("Hello Ada"))
    first = (await api_gateway.run({"prompt": "I am Ada"})).json()
    assert first["result"] == "Hello Ada"
    fake.reply(Echo())
    second = await api_gateway.run({"prompt": "who am I?", "session_id": first["session_id"]})
    assert second.json()["result"] == "who am I?"
    messages = fake.message_requests()[-1].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"][0]["text"] == "Hello Ada"


async def test_api_backend_messages_pass_through_resolved_and_filtered(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """The body goes upstream as sent, alias resolved, with the operator key and the
    client's version/beta headers only; tools are the client's business here."""
    tools = [{"name": "lookup", "input_schema": {"type": "object"}}]
    response = await api_gateway.client.post(
        "/v1/messages",
        json={
            "model": "sonnet",
            "max_tokens": 32,
            "temperature": 0.2,
            "tools": tools,
            "messages": [{"role": "user", "content": "hi"}],
        },
        headers={
            "x-api-key": api_gateway.key,
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "some-beta",
            "x-secret-header": "nope",
        },
    )
    assert response.status_code == 200
    sent = fake.message_requests()[-1]
    assert sent.body["model"] == "claude-sonnet-5-5"
    assert (sent.body["temperature"], sent.body["tools"]) == (0.2, tools)
    assert sent.headers["x-api-key"] == FAKE_API_KEY
    assert sent.headers["anthropic-beta"] == "some-beta"
    assert "x-secret-header" not in sent.headers


async def test_api_backend_openai_door_sends_sampling_upstream(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """On the API backend the OpenAI door's max_tokens, stop and system reach the API."""
    fake.reply(Text("ok"))
    response = await api_gateway.client.post(
        "/v1/chat/completions",
        json={
            "model": "haiku",
            "max_tokens": 17,
            "stop": "END",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
            ],
        },
        headers=api_gateway.auth(),
    )
    assert response.json()["choices"][0]["message"]["content"] == "ok"
    body: dict[str, Any] = fake.message_requests()[-1].body
    assert (body["model"], body["max_tokens"], body["stop_sequences"]) == (
        "claude-haiku-5-5",
        17,
        ["END"],
    )
    assert "be brief" in str(body["system"])


async def test_api_backend_audits_tokens_and_cost(
    api_gateway: Gateway, fake: FakeAnthropic
) -> None:
    """A pass-through request leaves an audit row with its tokens and estimated cost."""
    fake.reply(Text("counted", usage_in=40, usage_out=9))
    await api_gateway.client.post(
        "/v1/messages",
        json={"model": "sonnet", "max_tokens": 32, "messages": [{"role": "user", "content": "x"}]},
        headers={"x-api-key": api_gateway.key},
    )
    await app_services(api_gateway.app).audit.flush()
    [row] = await app_services(api_gateway.app).store.audit.recent(1)
    assert (row["door"], row["input_tokens"], row["output_tokens"]) == ("anthropic", 40, 9)
    assert row["cost_usd"] and row["cost_usd"] > 0
