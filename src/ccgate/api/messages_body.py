"""The Anthropic Messages body, shared by the doors that take one: ``/v1/messages`` and each
request's ``params`` of ``/v1/messages/batches``. Parsing (the API's checks, naming the bad
field) and the finished message object; no routes here, so no door imports another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ccgate.api.content import anthropic_block, bad, split_turns
from ccgate.config import Settings
from ccgate.runners.base import RunRequest, RunResult
from ccgate.turns import ContentBlock, Usage


@dataclass
class MessagesCall:
    """A validated ``/v1/messages`` body."""

    raw: dict[str, Any]
    model: str
    stream: bool
    system: str | None
    history: list[dict[str, Any]]
    content: list[ContentBlock]
    max_tokens: int
    stop_sequences: list[str] | None
    temperature: float | None
    top_p: float | None

    def run_request(self, model: str, settings: Settings, owner: str | None = None) -> RunRequest:
        """This call as one turn for a runner, under the server's job timeouts."""
        return RunRequest(
            content=self.content,
            model=model,
            history=self.history,
            system_prompt=self.system,
            timeout_secs=settings.job_timeout_secs,
            idle_timeout_secs=settings.idle_timeout_secs,
            max_tokens=self.max_tokens,
            stop_sequences=self.stop_sequences,
            temperature=self.temperature,
            top_p=self.top_p,
            owner=owner,
        )


def system_text(value: Any) -> str | None:
    """A Messages ``system`` (a string or text blocks) as one text; 400 otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for index, block in enumerate(value):
            if (
                not isinstance(block, dict)
                or block.get("type") != "text"
                or not isinstance(block.get("text"), str)
            ):
                raise bad(f"system.{index}: system blocks must be text blocks", f"system.{index}")
            parts.append(block["text"])
        return "\n\n".join(parts)
    raise bad("system: must be a string or a list of text blocks", "system")


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise bad(f"{name}: must be a number between {low:g} and {high:g}", name)
    return float(value)


def message_turns(value: Any) -> list[dict[str, Any]]:
    """Messages ``messages`` as turns of checked blocks; 400 naming the bad field."""
    if not isinstance(value, list) or not value:
        raise bad("messages: must be a non-empty list", "messages")
    turns = []
    for index, message in enumerate(value):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise bad(f"{where}: must be an object", where)
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise bad(f"{where}.role: must be 'user' or 'assistant'", f"{where}.role")
        content = message.get("content")
        if isinstance(content, str):
            blocks: list[ContentBlock] = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            blocks = [anthropic_block(b, f"{where}.content.{i}") for i, b in enumerate(content)]
        else:
            raise bad(f"{where}.content: must be a string or a list of blocks", f"{where}.content")
        turns.append({"role": role, "content": blocks})
    return turns


def parse_messages_call(body: dict[str, Any], *, tools_allowed: bool) -> MessagesCall:
    """Validate a Messages body as the API does, naming the bad field."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model: field required", "model")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise bad("max_tokens: must be a positive integer", "max_tokens")
    if body.get("tools") and not tools_allowed:
        raise bad(
            "tools: tool use is off by design on the CLI backend (ccgate runs Claude "
            "Code with no tools); use CCGATE_BACKEND=api for tool calling",
            "tools",
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("stream: must be a boolean", "stream")
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise bad("stop_sequences: must be a list of strings", "stop_sequences")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise bad("metadata: must be an object", "metadata")
    if tools_allowed:
        # The API backend passes the conversation on as written (tool blocks included) and
        # the upstream checks its shape; only what ccgate itself needs is checked here.
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad("messages: must be a non-empty list", "messages")
        return MessagesCall(body, model, stream, None, [], [], max_tokens, stops, None, None)
    system = system_text(body.get("system"))
    history, content = split_turns(message_turns(body.get("messages")))
    return MessagesCall(
        body,
        model,
        stream,
        system,
        history,
        content,
        max_tokens,
        stops,
        _number(body, "temperature", 0, 1),
        _number(body, "top_p", 0, 1),
    )


def message_object(message_id: str, result: RunResult, model: str) -> dict[str, Any]:
    """A finished turn as the Messages API's message object."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": result.model or model,
        "content": [{"type": "text", "text": result.text}],
        "stop_reason": result.stop_reason or "end_turn",
        "stop_sequence": None,
        "usage": Usage.from_mapping(result.usage).as_dict(),
    }
