"""The sandbox setting and the bwrap argv: what a CLI process may see, and what it may write."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ccgate.config import ConfigError, Settings
from ccgate.runners.sandbox import (
    NO_SANDBOX,
    BwrapSandbox,
    sandbox_for,
    sandbox_problem,
)


def _mounts(argv: list[str], kind: str) -> list[str]:
    """The destinations of every `kind` mount (`--bind`, `--ro-bind`, `--tmpfs`) in `argv`."""
    found = []
    for i, arg in enumerate(argv):
        if arg == kind:
            found.append(argv[i + 2] if kind.endswith("bind") else argv[i + 1])
    return found


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A run dir, a HOME and the env a CLI would run with."""
    run_dir = tmp_path / "work" / "ccgate-run-1"
    run_dir.mkdir(parents=True)
    home = tmp_path / "home"
    home.mkdir()
    return run_dir, home, {"PATH": os.environ["PATH"], "HOME": str(home)}


def test_sandbox_off_leaves_argv_unchanged(make_settings: Callable[..., Settings]) -> None:
    """CCGATE_SANDBOX=off (the default) starts the CLI as it is."""
    sandbox = sandbox_for(make_settings())

    assert sandbox is NO_SANDBOX
    assert sandbox.wrap(["claude", "-p"], run_dir="/tmp/x", env={}) == ["claude", "-p"]


def test_sandbox_setting_accepts_only_off_and_bwrap(make_settings: Callable[..., Settings]) -> None:
    """Another value stops start-up with an error naming the key and the choices."""
    with pytest.raises(ConfigError, match=r"CCGATE_SANDBOX.*off or bwrap"):
        make_settings(CCGATE_SANDBOX="docker")
    assert isinstance(sandbox_for(make_settings(CCGATE_SANDBOX="bwrap")), BwrapSandbox)


def test_sandbox_bwrap_binds_only_the_run_dir_and_config_writable(
    layout: tuple[Path, Path, dict[str, str]],
) -> None:
    """Writable: the run dir, the config dir and ~/.claude.json; HOME itself is an empty tmpfs."""
    run_dir, home, env = layout

    argv = BwrapSandbox("/usr/bin/bwrap").wrap(["true", "x"], run_dir=str(run_dir), env=env)

    assert _mounts(argv, "--bind") == [
        str(home / ".claude"),
        str(home / ".claude.json"),
        str(run_dir),
    ]
    assert str(home) in _mounts(argv, "--tmpfs")
    assert argv[argv.index("--chdir") + 1] == str(run_dir)
    assert argv[argv.index("--") + 1 :] == [os.path.realpath("/usr/bin/true"), "x"]
    assert (home / ".claude").is_dir() and (home / ".claude.json").read_text() == "{}"


def test_sandbox_bwrap_drops_privileges_and_keeps_the_process_group(
    layout: tuple[Path, Path, dict[str, str]],
) -> None:
    """Namespaces on, capabilities dropped, tied to its parent, and no --new-session (a group
    kill must still reach the CLI)."""
    run_dir, _, env = layout

    argv = BwrapSandbox().wrap(["true"], run_dir=str(run_dir), env=env)

    assert {"--unshare-all", "--share-net", "--die-with-parent"} <= set(argv)
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert "--new-session" not in argv


def test_sandbox_bwrap_binds_an_npm_package_read_only(
    layout: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    """An executable inside an npm package makes its package directory visible, read-only."""
    run_dir, _, env = layout
    package = tmp_path / "lib" / "node_modules" / "cli"
    (package / "bin").mkdir(parents=True)
    (package / "package.json").write_text("{}")
    executable = package / "bin" / "claude"
    executable.write_bytes(b"\x7fELF")
    executable.chmod(0o755)

    argv = BwrapSandbox().wrap([str(executable)], run_dir=str(run_dir), env=env)

    assert str(package) in _mounts(argv, "--ro-bind")
    assert str(package) not in _mounts(argv, "--bind")


def test_sandbox_bwrap_missing_executable_is_an_os_error(
    layout: tuple[Path, Path, dict[str, str]],
) -> None:
    """A CLI that cannot be found fails like a failed start (OSError), before bwrap runs."""
    run_dir, _, env = layout

    with pytest.raises(FileNotFoundError):
        BwrapSandbox().wrap(["no-such-claude-here"], run_dir=str(run_dir), env=env)


async def test_sandbox_problem_names_a_missing_bwrap(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """With bwrap asked for but not on PATH, the start-up check says so and how to fix it."""
    problem = await sandbox_problem(make_settings(CCGATE_SANDBOX="bwrap", PATH=str(tmp_path)))

    assert problem is not None
    assert problem.startswith("CCGATE_SANDBOX=bwrap but bwrap is not installed")
    assert "apt-get install bubblewrap" in problem
    assert await sandbox_problem(make_settings(PATH=str(tmp_path))) is None
