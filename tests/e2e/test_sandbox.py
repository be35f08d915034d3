"""CCGATE_SANDBOX=bwrap: the real CLI runs, and sees nothing but its run and config dirs.

These tests need bubblewrap (`bwrap`) that works on this machine; without it they skip with
the reason (and fail in CI, which installs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from ccgate.runners.base import RunRequest, TextDelta, collect
from ccgate.runners.cli import ClaudeCliRunner
from ccgate.runners.cli_command import LOCKDOWN_ENV, CliOptions, build_argv, build_env, user_message
from ccgate.runners.sandbox import BwrapSandbox
from tests.conftest import service_missing
from tests.e2e.conftest import StartServer, keyed_client, wait_until
from tests.support.fake_anthropic import Echo, FakeAnthropic, Slow, cli_env
from tests.support.server import (
    ServerStartError,
    base_path_without,
    processes_under,
    run_ccgate,
)

pytestmark = pytest.mark.real_cli


@pytest.fixture
async def bwrap() -> BwrapSandbox:
    """The bwrap sandbox; skips (fails in CI) where bwrap is missing or cannot run here."""
    path = shutil.which("bwrap")
    if path is None:
        service_missing("bubblewrap is not installed (apt-get install bubblewrap)")
    assert path is not None
    sandbox = BwrapSandbox(path)
    problem = await sandbox.problem({"PATH": os.environ.get("PATH", "")})
    if problem is not None:
        service_missing(f"bwrap does not work on this machine: {problem}")
    return sandbox


def _run(argv: list[str], env: dict[str, str], cwd: Path, stdin: bytes = b"") -> str:
    """Run `argv` to its end; return its stdout (stderr on failure, marked)."""
    done = subprocess.run(
        argv, input=stdin, env=env, cwd=cwd, capture_output=True, timeout=60, check=False
    )
    if done.returncode != 0:
        return f"FAILED({done.returncode}): {done.stderr.decode(errors='replace')}"
    return done.stdout.decode(errors="replace")


def _layout(tmp_path: Path, home: Path, work_dir: Path) -> dict[str, Path]:
    """A run dir, a second run's dir, ccgate's database and env file, a file in HOME and
    the CLI's credentials, each holding a line naming itself."""
    paths = {
        "run": work_dir / "ccgate-run-mine" / "in-run.txt",
        "other_run": work_dir / "ccgate-run-other" / "secret.txt",
        "database": tmp_path / "server0" / "ccgate.db",
        "env_file": tmp_path / "server0" / "ccgate.env",
        "home": home / "notes.txt",
        "credentials": home / ".claude" / ".credentials.json",
    }
    for name, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {name}\n", encoding="utf-8")
    return paths


async def test_sandbox_shows_only_the_run_and_config_dirs(
    bwrap: BwrapSandbox, tmp_path: Path, home: Path, work_dir: Path
) -> None:
    """Wrapped by the runner's own function, `cat` reads the run dir and the CLI's config dir
    but not ccgate's database or env file, the rest of HOME, or another run's dir."""
    paths = _layout(tmp_path, home, work_dir)
    run_dir = paths["run"].parent
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "TMPDIR": str(run_dir)}

    def cat(path: Path) -> str:
        return _run(bwrap.wrap(["cat", str(path)], run_dir=str(run_dir), env=env), env, run_dir)

    seen = {name: cat(path) == f"content of {name}\n" for name, path in paths.items()}
    listing = _run(bwrap.wrap(["ls", "-A", str(home)], run_dir=str(run_dir), env=env), env, run_dir)

    assert seen == {
        "run": True,
        "credentials": True,
        "other_run": False,
        "database": False,
        "env_file": False,
        "home": False,
    }
    assert listing.split() == [".claude", ".claude.json"]


async def test_sandbox_hides_mentioned_files_even_with_mentions_on(
    bwrap: BwrapSandbox,
    fake: FakeAnthropic,
    tmp_path: Path,
    home: Path,
    work_dir: Path,
    claude_path: Path,
) -> None:
    """The real CLI with the mention switches removed, in the sandbox: `@file` in its own run
    dir is read (mentions are on), `@file` next to ccgate's database and in HOME are not."""
    fake.default = Echo()
    paths = _layout(tmp_path, home, work_dir)
    run_dir = paths["run"].parent
    tokens = {name: f"TOKEN-{name}-{secrets.token_hex(6)}" for name in ("run", "database", "home")}
    for name, token in tokens.items():
        paths[name].write_text(token, encoding="utf-8")
    options = CliOptions(
        executable=str(claude_path), base_env=cli_env(fake, home), upstream_retries=0
    )
    env = {k: v for k, v in build_env(options, str(run_dir)).items() if k not in LOCKDOWN_ENV}
    request = RunRequest.from_text(" ".join(f"@{paths[name]}" for name in tokens), "haiku")

    argv = bwrap.wrap(build_argv(options, request), run_dir=str(run_dir), env=env)
    output = _run(argv, env, run_dir, user_message(request.content))

    assert '"type":"result"' in output, output
    body = json.dumps([r.body for r in fake.message_requests()])
    assert {name: token in body for name, token in tokens.items()} == {
        "run": True,
        "database": False,
        "home": False,
    }


async def test_sandbox_cancel_leaves_no_process_behind(
    bwrap: BwrapSandbox, fake: FakeAnthropic, home: Path, work_dir: Path, claude_path: Path
) -> None:
    """Cancelling a sandboxed run mid-stream ends bwrap and the CLI inside it, and removes
    the run directory."""
    fake.reply(Slow("one two three four five six", delay=0.5, chunks=6))
    runner = ClaudeCliRunner(
        CliOptions(
            executable=str(claude_path),
            base_env=cli_env(fake, home),
            upstream_retries=0,
            kill_grace_secs=1.0,
            work_dir=str(work_dir),
            sandbox=bwrap,
        )
    )
    request = RunRequest.from_text("slow please", "haiku", timeout_secs=60)

    seen = []
    async with contextlib.aclosing(runner.run(request)) as events:
        async for event in events:
            seen.append(event)
            if isinstance(event, TextDelta):
                break
    await runner.aclose()

    assert isinstance(seen[-1], TextDelta)  # cancelled mid-stream, not after the end
    assert processes_under(work_dir) == []
    assert _entries(work_dir) == []


async def test_sandbox_run_resumes_earlier_turns_inside_it(
    bwrap: BwrapSandbox, fake: FakeAnthropic, home: Path, work_dir: Path, claude_path: Path
) -> None:
    """A run with history finds its transcript in the (bound) config dir and sends every turn."""
    fake.default = Echo()
    runner = ClaudeCliRunner(
        CliOptions(
            executable=str(claude_path),
            base_env=cli_env(fake, home),
            upstream_retries=0,
            work_dir=str(work_dir),
            sandbox=bwrap,
        )
    )
    history = [
        {"role": "user", "content": "EARLIER-QUESTION"},
        {"role": "assistant", "content": "EARLIER-ANSWER"},
    ]

    result = await collect(
        runner, RunRequest.from_text("now this", "haiku", history=history, timeout_secs=60)
    )
    await runner.aclose()

    assert result.text == "now this"
    body = json.dumps(fake.message_requests()[-1].body)
    assert "EARLIER-QUESTION" in body and "EARLIER-ANSWER" in body


def test_sandbox_serve_answers_cold_and_warm_inside_it(
    bwrap: BwrapSandbox,
    start_server: StartServer,
    server_env: dict[str, str],
    fake: FakeAnthropic,
    work_dir: Path,
) -> None:
    """`serve` with CCGATE_SANDBOX=bwrap answers from a cold run and from a warm process,
    and the CLI processes live in a mount namespace of their own."""
    fake.default = Echo()
    server = start_server(server_env, CCGATE_SANDBOX="bwrap", CCGATE_POOL_MODE="fresh")
    own_namespace = os.readlink("/proc/self/ns/mnt")
    namespaces: set[str] = set()

    def pooled_namespaces() -> bool:
        namespaces.update(_namespaces(work_dir))
        return len(namespaces - {own_namespace}) > 0

    with keyed_client(server) as http:
        cold = http.post("/api/v1/run", json={"prompt": "first, cold"})
        assert wait_until(pooled_namespaces, 20)
        served = [http.post("/api/v1/run", json={"prompt": f"warm {n}"}) for n in range(3)]

    assert [r.status_code for r in (cold, *served)] == [200] * 4, cold.text
    assert cold.json()["result"] == "first, cold"
    bodies = [json.dumps(r.body) for r in fake.message_requests()]
    assert "ccgate-run-" in bodies[0]
    assert any("ccgate-pool-" in body for body in bodies[1:])


def _entries(path: Path) -> list[str]:
    return [p.name for p in path.iterdir()]


def _namespaces(work_dir: Path) -> set[str]:
    """Mount namespaces of the processes running in a directory below `work_dir`."""
    found = set()
    for pid in processes_under(work_dir):
        try:
            found.add(os.readlink(f"/proc/{pid}/ns/mnt"))
        except OSError:
            continue
    return found


def test_sandbox_serve_refuses_to_start_without_bwrap(
    start_server: StartServer, server_env: dict[str, str]
) -> None:
    """With CCGATE_SANDBOX=bwrap and no bwrap, `serve` exits saying why, never unconfined."""
    env = {**server_env, "PATH": base_path_without("bwrap", server_env["PATH"])}

    with pytest.raises(ServerStartError) as caught:
        start_server(env, CCGATE_SANDBOX="bwrap")

    assert "CCGATE_SANDBOX=bwrap but bwrap is not installed" in str(caught.value)


async def test_sandbox_doctor_reports_it_works_and_the_cli_starts_in_it(
    bwrap: BwrapSandbox, server_env: dict[str, str], tmp_path: Path
) -> None:
    """`doctor` says whether the sandbox is on, works here, and lets the CLI start."""
    on = _doctor({**server_env, "CCGATE_SANDBOX": "bwrap"}, tmp_path)
    off = _doctor(server_env, tmp_path)

    assert "[ok] sandbox: bwrap works on this machine" in on
    assert "[ok] sandbox: the claude CLI starts in it" in on
    assert "[info] sandbox: off (CCGATE_SANDBOX=off); bwrap works here" in off


def _doctor(env: dict[str, str], cwd: Path) -> str:
    return run_ccgate(["doctor"], env=env, cwd=cwd).stdout


def test_sandbox_doctor_fails_when_bwrap_is_missing(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    """`doctor` with CCGATE_SANDBOX=bwrap and no bwrap fails the check and says what to do."""
    env = {
        **server_env,
        "CCGATE_SANDBOX": "bwrap",
        "PATH": base_path_without("bwrap", server_env["PATH"]),
    }

    done = run_ccgate(["doctor"], env=env, cwd=tmp_path)

    assert done.returncode == 1
    assert "[FAIL] sandbox: bwrap is not installed" in done.stdout
    assert "apt-get install bubblewrap" in done.stdout
