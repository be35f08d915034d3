"""Request bodies for the doors that read their JSON themselves, so the fuzzer reaches them.

`/v1/messages`, `/v1/messages/count_tokens` and `/v1/chat/completions` parse their body by
hand (to answer in their own error shape), so `/openapi.json` declares none. These loose
schemas name the fields those doors read, with any JSON allowed in each.
"""

from __future__ import annotations

from typing import Any

_ANY: dict[str, Any] = {}
_TEXT_BLOCK = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["text", "image", "document", "x"]},
        "text": {"type": "string"},
        "source": {"type": "object"},
    },
}
_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_BLOCK, "maxItems": 3}]}
_MESSAGE = {
    "type": "object",
    "properties": {
        "role": {"type": "string", "enum": ["user", "assistant", "system", "tool"]},
        "content": _CONTENT,
    },
    "required": ["role", "content"],
}
_MESSAGES = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "max_tokens": {"type": "integer"},
        "messages": {"type": "array", "items": _MESSAGE, "maxItems": 4},
        "system": _CONTENT,
        "stream": {"type": "boolean"},
        "metadata": {"type": "object"},
        "stop_sequences": {"type": "array", "items": {"type": "string"}},
        "temperature": {"type": "number"},
        "tools": {"type": "array", "items": _ANY},
    },
    "required": ["model", "messages"],
}
_CHAT = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "items": _MESSAGE, "maxItems": 4},
        "max_tokens": {"type": "integer"},
        "max_completion_tokens": {"type": "integer"},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object"},
        "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "temperature": {"type": "number"},
        "n": {"type": "integer"},
        "response_format": {"type": "object"},
        "tools": {"type": "array", "items": _ANY},
    },
    "required": ["model", "messages"],
}
DOOR_BODIES: dict[str, dict[str, Any]] = {
    "/v1/messages": _MESSAGES,
    "/v1/messages/count_tokens": _MESSAGES,
    "/v1/chat/completions": _CHAT,
}


def add_door_bodies(spec: dict[str, Any]) -> None:
    """Declare a JSON body on each door in DOOR_BODIES that `spec` lists without one."""
    for path, body in DOOR_BODIES.items():
        operation = spec["paths"][path]["post"]
        operation.setdefault(
            "requestBody",
            {"required": True, "content": {"application/json": {"schema": body}}},
        )
