"""What a request may spend, estimated before it runs, so that budgets and token quotas can
hold that much back while it runs (docs/limits.md, "Reservations").

Input tokens come from the conversation: about 4 bytes of UTF-8 text per token (tool
definitions, tool calls and tool results count as text), 1,600 tokens per image, 1,500 tokens
per 100 KB of PDF. Output tokens are the request's ``max_tokens``, else 4,096 (the API
backend's own default). The cost is those tokens at the model's list price (``pricing.py``); a
model missing from the price table is priced as the most expensive one listed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ccgate.pricing import PRICES_PER_MTOK, prices_for
from ccgate.runners.base import RunRequest

BYTES_PER_TOKEN = 4
# Output tokens of a request without max_tokens: the API backend's own default
# (runners/anthropic_api.DEFAULT_MAX_TOKENS; a test keeps the two equal).
DEFAULT_OUTPUT_TOKENS = 4_096
IMAGE_TOKENS = 1_600
# Block fields that carry no text worth counting.
_BOOKKEEPING = frozenset({"type", "cache_control", "tool_use_id", "is_error"})
PDF_TOKENS_PER_100KB = 1_500
# (input, output) USD per million tokens of the dearest listed model.
_DEAREST = max(((i, o) for _, i, o in PRICES_PER_MTOK), key=lambda price: price[1])


@dataclass(frozen=True)
class ConversationSize:
    """A conversation measured: its text in UTF-8 bytes, and tokens of its images and PDFs."""

    text_bytes: int = 0
    media_tokens: int = 0

    @property
    def tokens(self) -> int:
        """Estimated input tokens."""
        return math.ceil(self.text_bytes / BYTES_PER_TOKEN) + self.media_tokens

    def __add__(self, other: ConversationSize) -> ConversationSize:
        return ConversationSize(
            self.text_bytes + other.text_bytes, self.media_tokens + other.media_tokens
        )


@dataclass(frozen=True)
class RunEstimate:
    """What one run may spend: its model, estimated input tokens and output cap."""

    model: str
    input_tokens: int
    max_output_tokens: int | None = None

    @property
    def tokens(self) -> int:
        """Input plus output tokens (output: ``max_output_tokens``, else the default)."""
        return self.input_tokens + (self.max_output_tokens or DEFAULT_OUTPUT_TOKENS)

    @property
    def micro_usd(self) -> int:
        """Those tokens at the model's list price, in micro-dollars."""
        input_price, output_price = prices_for(self.model) or _DEAREST
        output = self.max_output_tokens or DEFAULT_OUTPUT_TOKENS
        # USD per million tokens times tokens is micro-dollars.
        return math.ceil(input_price * self.input_tokens + output_price * output)


def _text(value: str) -> ConversationSize:
    return ConversationSize(text_bytes=len(value.encode("utf-8", "replace")))


def _as_text(value: Any) -> ConversationSize:
    return _text(json.dumps(value, ensure_ascii=False, default=str))


def block_size(block: Any) -> ConversationSize:
    """One content block as the Messages API writes it; unknown shapes count as their JSON."""
    if isinstance(block, str):
        return _text(block)
    if not isinstance(block, Mapping):
        return ConversationSize()
    kind = block.get("type")
    source = block.get("source")
    if kind == "text":
        return _text(str(block.get("text") or "")) + _other_fields(block, "text")
    if kind == "image":
        return ConversationSize(media_tokens=IMAGE_TOKENS) + _other_fields(block, "source")
    if kind == "document":
        return _document_source(source) + _other_fields(block, "source")
    if kind == "tool_result":
        return content_size(block.get("content")) + _other_fields(block, "content")
    return _as_text(block)


def _other_fields(block: Mapping[str, Any], measured: str) -> ConversationSize:
    """What a block carries besides its measured field (citations, a document's title and
    context...): the pass-through sends it upstream, so it counts as text."""
    rest = {k: v for k, v in block.items() if k not in _BOOKKEEPING and k != measured}
    return _as_text(rest) if rest else ConversationSize()


def _document_source(source: Any) -> ConversationSize:
    """A document's source: plain text, content blocks, or a PDF (by its size)."""
    kind = source.get("type") if isinstance(source, Mapping) else None
    if kind == "text":
        return _text(str(source.get("data") or ""))
    if kind == "content":
        return content_size(source.get("content"))
    data = source.get("data") if isinstance(source, Mapping) else None
    size = len(data) * 3 // 4 if isinstance(data, str) else 0
    return ConversationSize(media_tokens=PDF_TOKENS_PER_100KB * max(1, math.ceil(size / 100_000)))


def content_size(content: Any) -> ConversationSize:
    """A turn's content: a string or a list of blocks."""
    if isinstance(content, list):
        total = ConversationSize()
        for block in content:
            total += block_size(block)
        return total
    return _text(content) if isinstance(content, str) else ConversationSize()


def conversation_size(system: Any, messages: Any, tools: Any = None) -> ConversationSize:
    """A Messages conversation as written by a client: system, turns, tool definitions."""
    total = content_size(system)
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, Mapping):
            total += content_size(message.get("content"))
    if tools:
        total += _as_text(tools)
    return total


def estimate_run(request: RunRequest, size: ConversationSize | None = None) -> RunEstimate:
    """The estimate of a run; ``size`` adds what the request carries beyond its turns (tool
    definitions, for example)."""
    system = "\n".join(s for s in (request.system_prompt, request.append_system_prompt) if s)
    measured = conversation_size(system, [*request.history, {"content": request.content}])
    if size is not None:
        measured += size
    return RunEstimate(request.model, measured.tokens, request.max_tokens)
