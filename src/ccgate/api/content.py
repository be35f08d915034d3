"""Conversation content shared by the compatible doors: validating and normalising turns.

Both doors end up with Anthropic Messages: a list of ``{"role", "content": [blocks]}`` with
text, image (base64) and document blocks. The CLI backend hands them over whole (earlier
turns through a transcript, the new turn on stdin); nothing is flattened into a prompt.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ccgate.errors import ApiError
from ccgate.turns import ContentBlock, DocumentBlock, ImageBlock

IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_MAX_TEXT_BLOCKS = 10_000


def bad(message: str, param: str | None = None) -> ApiError:
    """A 400 naming the offending field."""
    return ApiError("invalid_request", message, param=param)


def positive_int(
    body: Mapping[str, Any], name: str, fail: Callable[[str, str], ApiError] = bad
) -> int | None:
    """``body[name]`` as a positive integer, None when absent; else ``fail``'s 400."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(f"{name}: must be a positive integer", name)
    return value


def number_up_to(
    body: Mapping[str, Any], name: str, high: float, fail: Callable[[str, str], ApiError] = bad
) -> float | None:
    """``body[name]`` as a finite number in ``[0, high]``, None when absent; else a 400."""
    value = body.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= high
    ):
        raise fail(f"{name}: must be a number between 0 and {high:g}", name)
    return float(value)


def _check_base64(data: Any, where: str) -> str:
    if not isinstance(data, str) or not data:
        raise bad(f"{where}.data: must be a non-empty base64 string", f"{where}.data")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad(f"{where}.data: is not valid base64", f"{where}.data") from None
    return data


def image_block(media_type: str, data: Any, where: str) -> ImageBlock:
    """A checked base64 image block."""
    if media_type not in IMAGE_TYPES:
        raise bad(
            f"{where}.media_type: must be one of {', '.join(IMAGE_TYPES)}", f"{where}.media_type"
        )
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": _check_base64(data, where)},
    }


def anthropic_block(block: Any, where: str) -> ContentBlock:
    """Check one Anthropic content block the runners can carry; drop cache_control."""
    if not isinstance(block, dict):
        raise bad(f"{where}: must be a content block object", where)
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise bad(f"{where}.text: must be a string", f"{where}.text")
        return {"type": "text", "text": text}
    if kind == "image":
        source = block.get("source")
        if not isinstance(source, dict) or source.get("type") != "base64":
            raise bad(
                f"{where}.source: only base64 image sources are supported (send the "
                "bytes, not a URL)",
                f"{where}.source",
            )
        return image_block(str(source.get("media_type")), source.get("data"), f"{where}.source")
    if kind == "document":
        source = block.get("source")
        if (
            isinstance(source, dict)
            and source.get("type") == "base64"
            and source.get("media_type") == "application/pdf"
        ):
            data = _check_base64(source.get("data"), f"{where}.source")
            document: DocumentBlock = {
                "type": "document",
                "source": {"type": "base64", "media_type": "application/pdf", "data": data},
            }
        elif (
            isinstance(source, dict)
            and source.get("type") == "text"
            and isinstance(source.get("data"), str)
        ):
            document = {
                "type": "document",
                "source": {"type": "text", "media_type": "text/plain", "data": source["data"]},
            }
        else:
            raise bad(
                f"{where}.source: documents must be base64 PDF or text sources", f"{where}.source"
            )
        if isinstance(block.get("title"), str):
            document["title"] = block["title"]
        if isinstance(block.get("context"), str):
            document["context"] = block["context"]
        return document
    if kind in ("tool_use", "tool_result", "server_tool_use", "mcp_tool_use"):
        raise bad(
            f"{where}: {kind} blocks need tools, which are off by design on this "
            "backend (ccgate runs Claude Code with no tools)",
            where,
        )
    raise bad(
        f"{where}.type: unsupported content block {kind!r}; supported: text, image, document",
        f"{where}.type",
    )


def merge_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join consecutive turns of the same role, as the Messages API itself does."""
    merged: list[dict[str, Any]] = []
    for message in messages:
        if merged and merged[-1]["role"] == message["role"]:
            merged[-1] = {
                "role": message["role"],
                "content": [*merged[-1]["content"], *message["content"]],
            }
        else:
            merged.append(message)
    return merged


def split_turns(
    messages: list[dict[str, Any]], param: str = "messages"
) -> tuple[list[dict[str, Any]], list[ContentBlock]]:
    """(earlier turns, the new user turn's blocks) of a conversation that ends with the user.

    The earlier turns start with a user turn and alternate, as the Messages API requires.
    """
    turns = merge_turns(messages)
    if not turns:
        raise bad(f"{param}: must hold at least one message", param)
    if turns[-1]["role"] != "user":
        raise bad(
            f"{param}: the last message must come from the user (a partial assistant "
            "answer to continue is not supported by the CLI backend)",
            param,
        )
    if sum(1 for t in turns for b in t["content"] if b["type"] == "text") > _MAX_TEXT_BLOCKS:
        raise bad(f"{param}: too many content blocks", param)
    if turns[0]["role"] != "user":
        raise bad(f"{param}: the first message must use the user role", param)
    content: list[ContentBlock] = turns[-1]["content"]
    return turns[:-1], content


def text_of(blocks: Sequence[ContentBlock]) -> str:
    """The text blocks of a turn, joined (for size checks and audit)."""
    return "\n".join(b["text"] for b in blocks if b["type"] == "text")


def conversation_bytes(
    system: str | None, history: list[dict[str, Any]], content: Sequence[ContentBlock]
) -> int:
    """UTF-8 size of the text of a conversation, the system prompt included."""
    total = len((system or "").encode("utf-8"))
    for turn in [*history, {"content": content}]:
        total += len(text_of(turn["content"]).encode("utf-8"))
    return total
