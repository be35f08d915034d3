"""The estimate a request reserves before it runs: tokens from the conversation and the
output cap, cost at the model's list price."""

from __future__ import annotations

from ccgate.limits.estimate import (
    DEFAULT_OUTPUT_TOKENS,
    RunEstimate,
    conversation_size,
    estimate_run,
)
from ccgate.runners.anthropic_api import DEFAULT_MAX_TOKENS
from ccgate.runners.base import RunRequest


def test_estimate_prices_input_and_output_at_the_models_list_price() -> None:
    """400 input and 1,000 output tokens on sonnet ($3/$15 per million) reserve $0.0162."""
    estimate = RunEstimate("claude-sonnet-4-5", input_tokens=400, max_output_tokens=1000)
    assert (estimate.tokens, estimate.micro_usd) == (1400, 3 * 400 + 15 * 1000)


def test_estimate_without_max_tokens_uses_the_api_backends_default() -> None:
    """A request without max_tokens is reserved for the API backend's default output."""
    assert DEFAULT_OUTPUT_TOKENS == DEFAULT_MAX_TOKENS
    assert RunEstimate("haiku", input_tokens=10).tokens == 10 + DEFAULT_MAX_TOKENS


def test_estimate_of_an_unpriced_model_uses_the_dearest_price() -> None:
    """A model missing from the price table is reserved at the dearest listed price."""
    unknown = RunEstimate("my-custom-model", input_tokens=0, max_output_tokens=1000)
    assert unknown.micro_usd == RunEstimate("claude-opus-4", 0, 1000).micro_usd == 75_000


def test_estimate_counts_text_images_documents_and_tools() -> None:
    """Text is ~4 bytes a token, an image 1,600 tokens, a small PDF 1,500, and tool
    definitions, calls and results count as their text."""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a" * 400},
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/png",
                        "data": "AAAA" * 10_000,
                    },
                },
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": "AAAA"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t", "content": "b" * 40}],
        },
    ]
    size = conversation_size("sys", messages, [{"name": "f"}])
    assert size.media_tokens == 1_600 + 1_500
    assert 400 + 40 + 3 < size.text_bytes < 400 + 40 + 3 + 200


def test_estimate_counts_text_outside_a_blocks_main_field() -> None:
    """Citations on a text block, a document's title and context, and a document made of
    content blocks count as text: the pass-through sends all of them upstream."""
    messages = [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "hi",
                    "citations": [{"type": "char_location", "cited_text": "a" * 1000}],
                },
                {
                    "type": "document",
                    "title": "b" * 1000,
                    "context": "c" * 1000,
                    "source": {
                        "type": "content",
                        "content": [{"type": "text", "text": "d" * 1000}],
                    },
                },
            ],
        }
    ]
    assert conversation_size(None, messages).text_bytes > 4_000


def test_estimate_of_a_run_request_includes_history_and_system_prompts() -> None:
    """A run's estimate counts its system prompts, earlier turns and new turn."""
    request = RunRequest.from_text(
        "x" * 40,
        "sonnet",
        system_prompt="y" * 40,
        history=[
            {"role": "user", "content": [{"type": "text", "text": "z" * 40}]},
            {"role": "assistant", "content": [{"type": "text", "text": "w" * 40}]},
        ],
        max_tokens=50,
    )
    assert estimate_run(request) == RunEstimate("sonnet", 40, 50)
