"""The words a turn is made of: its token usage, and the content blocks of its messages.

Usage is counted by the runners as a plain mapping (``input_tokens``, ``output_tokens`` and the
two cache counts); ``Usage`` is the value the lifecycle, tickets, audit facts and door renderers
read and add, so none of them sums dictionary keys by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def _count(raw: Mapping[str, Any], name: str) -> int:
    value = raw.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(frozen=True)
class Usage:
    """Tokens one turn used: fresh input, output, and input written to or read from the cache."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> Usage:
        """The usage a runner, job row or upstream reported; missing or odd counts are 0."""
        if not raw:
            return cls()
        return cls(*(_count(raw, name) for name in _FIELDS))

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
        )

    @property
    def billed_tokens(self) -> int:
        """Input plus output tokens: what the token quotas count."""
        return self.input_tokens + self.output_tokens

    @property
    def prompt_tokens(self) -> int:
        """Every input token, cached ones included (OpenAI's ``prompt_tokens``)."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def as_dict(self) -> dict[str, int]:
        """The Messages API's usage object (all four counts)."""
        return {name: getattr(self, name) for name in _FIELDS}


class TextBlock(TypedDict):
    """A text content block."""

    type: Literal["text"]
    text: str


class Base64Source(TypedDict):
    """Inline data of an image or document block."""

    type: Literal["base64"]
    media_type: str
    data: str


class ImageBlock(TypedDict):
    """An image content block (base64)."""

    type: Literal["image"]
    source: Base64Source


class DocumentBlock(TypedDict):
    """A document content block (a PDF as base64, or plain text)."""

    type: Literal["document"]
    source: dict[str, Any]
    title: NotRequired[str]
    context: NotRequired[str]


class ToolUseBlock(TypedDict):
    """A tool call of the model (carried in history on the API backend only)."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(TypedDict):
    """The client's answer to a tool call (API backend only)."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: Any


ContentBlock = TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock
