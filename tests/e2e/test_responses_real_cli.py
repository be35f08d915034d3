"""The OpenAI Responses door through the official openai SDK against a real `ccgate serve` on
the CLI backend: the real pinned claude CLI talking to the fake Anthropic API."""

from __future__ import annotations

from typing import Any

import openai

from tests.support.fake_anthropic import FakeAnthropic, Slow, Text
from tests.support.server import ServerProcess


def _turn_texts(body: Any) -> list[tuple[str, str]]:
    """(role, text) of the user and assistant text blocks upstream got, without the CLI's
    own reminders."""
    out = []
    for message in body["messages"]:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks:
            text = block.get("text", "")
            if block.get("type") == "text" and not text.startswith("<system-reminder>"):
                out.append((message["role"], text))
    return out


def test_responses_real_cli_create_stream_and_continue(
    gateway: ServerProcess, fake: FakeAnthropic
) -> None:
    """create, a streamed create and a previous_response_id turn run through the real CLI,
    which sends the stored turn upstream before the new one."""
    with openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=gateway.create_key("sdk"), max_retries=0, timeout=60
    ) as client:
        fake.reply(Text("I am the answer"))
        first = client.responses.create(model="sonnet", input="first question")
        assert first.output_text == "I am the answer" and first.usage is not None
        fake.reply(Slow("one two three", delay=0.2, chunks=3))
        with client.responses.stream(model="sonnet", input="count") as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
        assert "".join(deltas) == "one two three" and final.usage is not None
        fake.reply(Text("second answer"))
        second = client.responses.create(
            model="sonnet", input="second question", previous_response_id=first.id
        )
        assert second.output_text == "second answer"
        texts = _turn_texts(fake.message_requests()[-1].body)
        earlier = [("user", "first question"), ("assistant", "I am the answer")]
        assert [t for t in texts if t in earlier] == earlier
        assert texts.index(earlier[1]) < texts.index(("user", "second question"))
