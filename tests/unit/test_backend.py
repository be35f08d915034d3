"""The backend registry and its one factory."""

from __future__ import annotations

import pytest

from ccgate.config import BACKEND_NAMES, load_settings
from ccgate.runners.anthropic_api import AnthropicApiRunner
from ccgate.runners.anthropic_client import AnthropicClient
from ccgate.runners.backend import BACKENDS, CAPABILITIES, build_backend
from ccgate.runners.cli import ClaudeCliRunner
from ccgate.runners.pooled_cli import PooledCliRunner
from tests.support.fake_runner import FakeRunner


def test_backend_registry_names_match_the_settings_choices() -> None:
    """CCGATE_BACKEND accepts exactly the registered backends (config imports no runner)."""
    assert set(BACKEND_NAMES) == set(BACKENDS) == set(CAPABILITIES)


async def test_build_backend_cli_has_no_pass_through_nor_breaker() -> None:
    """The CLI backend builds the CLI runner the settings ask for, without pass-through."""
    backend = build_backend(load_settings({"CCGATE_POOL_MODE": "reuse"}), cli_path="/bin/claude")
    try:
        assert backend.name == "cli" and isinstance(backend.runner, PooledCliRunner)
        assert backend.capabilities.needs_cli and not backend.capabilities.passthrough
        assert backend.passthrough is None and backend.breaker is None
        with pytest.raises(RuntimeError):
            backend.require_passthrough()
    finally:
        await backend.aclose()


async def test_build_backend_api_passes_through_its_client() -> None:
    """The API backend's pass-through client is the one its runner calls, with its breaker."""
    settings = load_settings({"CCGATE_BACKEND": "api", "ANTHROPIC_API_KEY": "sk-x"})
    backend = build_backend(settings)
    try:
        assert isinstance(backend.runner, AnthropicApiRunner)
        assert isinstance(backend.passthrough, AnthropicClient)
        assert backend.require_passthrough() is backend.runner.client
        assert backend.breaker is backend.runner.breaker
        assert backend.capabilities.full_model_ids and not backend.capabilities.needs_cli
    finally:
        await backend.aclose()


async def test_build_backend_keeps_a_handed_in_runner() -> None:
    """A test's runner replaces the backend's runner; the capabilities stay the backend's."""
    fake = FakeRunner()
    backend = build_backend(load_settings({}), runner=fake)
    assert backend.runner is fake and backend.capabilities == CAPABILITIES["cli"]
    assert not isinstance(backend.runner, ClaudeCliRunner)
