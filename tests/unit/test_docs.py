"""The docs keep up with the code: settings, error types, commands, the README's two commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ccgate.cli import app as cli_app
from ccgate.config import SETTINGS
from ccgate.errors import ERROR_KINDS, ErrorType

ROOT = Path(__file__).resolve().parents[2]


def _read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_docs_every_setting_is_in_the_configuration_table(setting: object) -> None:
    """Each setting has a row in docs/configuration.md with its default."""
    key, default = setting.key, setting.default  # type: ignore[attr-defined]
    row = next(
        (
            line
            for line in _read("docs/configuration.md").splitlines()
            if line.startswith(f"| `{key}` |")
        ),
        None,
    )
    assert row is not None, f"{key} is not documented in docs/configuration.md"
    assert (f"`{default}`" if default else "(empty)") in row


@pytest.mark.parametrize("error_type", sorted(ERROR_KINDS))
def test_docs_every_error_type_is_in_the_api_doc(error_type: ErrorType) -> None:
    """Each error type appears in docs/api.md with its status."""
    status = ERROR_KINDS[error_type].status
    assert f"| `{error_type}` | {status} |" in _read("docs/api.md")


def test_docs_every_command_is_in_the_readme() -> None:
    """Each ccgate command and keys subcommand is listed in the README."""
    readme = _read("README.md")
    names = [c.name or c.callback.__name__ for c in cli_app.registered_commands]  # type: ignore[union-attr]
    assert names
    for name in names:
        assert f"`ccgate {name}" in readme, name
    for sub in ("create", "list", "revoke"):
        assert f"`ccgate keys {sub}" in readme


def test_docs_readme_opens_with_two_commands_and_ci_runs_the_test_one() -> None:
    """The README's first screen has exactly two shell commands, and .ci/run runs the second."""
    readme = _read("README.md")
    first_screen = readme.split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", first_screen, re.DOTALL)
    commands = [line for block in blocks for line in block.strip().splitlines()]
    assert len(commands) == 2, commands
    assert "ccgate serve" in commands[0]
    assert commands[1] in _read(".ci/run").splitlines()
    assert "Terms" in first_screen and "ANTHROPIC_API_KEY" in first_screen
