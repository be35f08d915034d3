"""The warm pool's routing decisions and argv: what it may serve, and with which lockdown."""

from __future__ import annotations

import hashlib
import json

import pytest

from ccgate.config import load_settings
from ccgate.runners.base import RunRequest
from ccgate.runners.cli import ClaudeCliRunner
from ccgate.runners.cli_command import CliOptions, PromptFiles, build_argv
from ccgate.runners.pool import PoolConfig, WarmPool
from ccgate.runners.pooled_cli import PooledCliRunner, cli_runner


def _pool(mode: str) -> WarmPool:
    options = CliOptions(executable="/bin/claude", base_env={"PATH": "/usr/bin"})
    return WarmPool(options, PoolConfig(mode=mode))


def test_pool_key_separates_owners_and_argv() -> None:
    """Owner, model, system prompts and the stream flag all go into the pool key."""
    pool = _pool("fresh")
    base = RunRequest.from_text("hi", "haiku", owner="a")
    variants = [
        RunRequest.from_text("hi", "haiku", owner="b"),
        RunRequest.from_text("hi", "sonnet", owner="a"),
        RunRequest.from_text("hi", "haiku", owner="a", system_prompt="terse"),
        RunRequest.from_text("hi", "haiku", owner="a", append_system_prompt="terse"),
        RunRequest.from_text("hi", "haiku", owner="a", stream=False),
    ]
    same = RunRequest.from_text("other text", "haiku", owner="a")
    assert pool.key_for(same) == pool.key_for(base)
    assert all(pool.key_for(v) != pool.key_for(base) for v in variants)


def test_pool_never_serves_a_request_without_owner() -> None:
    """A request with no API key id always takes the cold path."""
    assert _pool("reuse").key_for(RunRequest.from_text("hi", "haiku")) is None


@pytest.mark.parametrize("text", ["/clear", "  /compact now", "/cost"])
def test_pool_reuse_sends_slash_text_cold(text: str) -> None:
    """In reuse mode (slash commands on, for /clear) text starting with / is never pooled."""
    request = RunRequest(
        content=[{"type": "text", "text": "ok"}, {"type": "text", "text": text}],
        model="haiku",
        owner="a",
    )
    assert _pool("reuse").key_for(request) is None
    assert _pool("fresh").key_for(request) is not None


def test_pool_argv_keeps_the_cold_lockdown() -> None:
    """Fresh processes run the cold argv; reuse drops only the slash-command switch."""
    request = RunRequest.from_text("hi", "haiku", owner="a", system_prompt="terse")
    files = PromptFiles(system="/pool/1/system-prompt.txt")
    cold = build_argv(_pool("fresh").options, request, prompt_files=files)
    fresh = _pool("fresh")
    reuse = _pool("reuse")
    assert fresh.argv(fresh.key_for(request), files) == cold  # type: ignore[arg-type]
    assert reuse.argv(reuse.key_for(request), files) == [  # type: ignore[arg-type]
        a for a in cold if a != "--disable-slash-commands"
    ]


def test_pool_key_holds_a_hash_of_the_system_prompts_not_their_text() -> None:
    """A pool key carries the SHA-256 of both system prompts and none of their text."""
    request = RunRequest.from_text(
        "hi", "haiku", owner="a", system_prompt="SECRET-" * 1000, append_system_prompt="APPENDED"
    )
    key = _pool("fresh").key_for(request)
    assert key is not None

    assert "SECRET" not in repr(key) and "APPENDED" not in repr(key)
    assert (
        key.prompts_sha256
        == hashlib.sha256(json.dumps(["SECRET-" * 1000, "APPENDED"]).encode()).hexdigest()
    )


async def test_cli_runner_is_pooled_unless_pool_mode_is_off() -> None:
    """cli_runner() builds the pooled runner for fresh/reuse and the plain one for off."""
    pooled = cli_runner(load_settings({"CCGATE_POOL_MODE": "reuse"}), "/bin/claude")
    plain = cli_runner(load_settings({}), "/bin/claude")
    try:
        assert isinstance(pooled, PooledCliRunner)
        assert pooled.pool.config.mode == "reuse"
        assert isinstance(plain, ClaudeCliRunner)
    finally:
        await pooled.aclose()
        await plain.aclose()
