"""Earlier turns on the CLI backend: the transcript the CLI resumes, and its clean-up."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ccgate.runners.base import RunError, RunRequest, collect
from ccgate.runners.cli_command import CliOptions
from ccgate.runners.pool import PoolConfig
from ccgate.runners.pooled_cli import PooledCliRunner
from ccgate.runners.transcript import (
    CLI_VERSION,
    config_dir,
    sanitized_project_dir,
    transcript_lines,
    write_transcript,
)
from tests.support.fake_claude_factory import make_fake_claude

if TYPE_CHECKING:
    from tests.unit.conftest import FakeCli

PIXEL = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"}
HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": [{"type": "text", "text": "first question"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "first answer"}]},
    {
        "role": "user",
        "content": [{"type": "text", "text": "look"}, {"type": "image", "source": PIXEL}],
    },
    {"role": "assistant", "content": [{"type": "text", "text": "a red pixel"}]},
]


def _entries(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


def _projects(home: Path) -> list[Path]:
    """What is left under the fake CLI's config dir's projects/ (HOME is tmp_path)."""
    projects = home / ".claude" / "projects"
    return sorted(projects.iterdir()) if projects.exists() else []


async def _eventually(check: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def test_transcript_lines_chain_the_turns_in_order() -> None:
    """Each line is one turn, in order, the child of the line before, in the run's session."""
    entries = _entries(transcript_lines(HISTORY, "sid-1", "/work/run", "sonnet"))
    assert [e["message"]["content"] for e in entries] == [t["content"] for t in HISTORY]
    assert [e["type"] for e in entries] == ["user", "assistant", "user", "assistant"]
    assert [e["message"]["role"] for e in entries] == [e["type"] for e in entries]
    assert entries[0]["parentUuid"] is None
    for parent, child in itertools.pairwise(entries):
        assert child["parentUuid"] == parent["uuid"]
    assert len({e["uuid"] for e in entries}) == 4
    for entry in entries:
        assert entry["sessionId"] == "sid-1"
        assert entry["cwd"] == "/work/run"
        assert entry["version"] == CLI_VERSION
        assert entry["isSidechain"] is False
        assert entry["userType"] == "external"
        assert entry["timestamp"].endswith("Z")


def test_transcript_lines_assistant_turns_look_like_cli_messages() -> None:
    """Assistant turns carry the fields of a finished Messages reply, with zero usage."""
    entries = _entries(transcript_lines(HISTORY, "sid-1", "/work/run", "sonnet"))
    message = entries[1]["message"]
    assert message["id"].startswith("msg_")
    assert message["type"] == "message"
    assert message["model"] == "sonnet"
    assert message["stop_reason"] == "end_turn"
    assert message["stop_sequence"] is None
    assert message["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert "model" not in entries[0]["message"]


def test_transcript_lines_normalise_string_content_and_block_fields() -> None:
    """A string content becomes a text block; fields the CLI does not forward are dropped."""
    history = [
        {"role": "user", "content": "plain question"},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "answer", "cache_control": {"type": "ephemeral"}}],
        },
    ]
    entries = _entries(transcript_lines(history, "sid", "/w", "sonnet"))
    assert entries[0]["message"]["content"] == [{"type": "text", "text": "plain question"}]
    assert entries[1]["message"]["content"] == [{"type": "text", "text": "answer"}]


def test_transcript_lines_keep_text_and_pdf_documents() -> None:
    """Document blocks (a text source or a base64 PDF) pass through with title and context."""
    doc = {
        "type": "document",
        "title": "notes",
        "context": "ctx",
        "source": {"type": "text", "media_type": "text/plain", "data": "DOC"},
    }
    pdf = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
    }
    history = [
        {"role": "user", "content": [doc, pdf]},
        {"role": "assistant", "content": [{"type": "text", "text": "read"}]},
    ]
    [user, _] = _entries(transcript_lines(history, "sid", "/w", "sonnet"))
    assert user["message"]["content"] == [doc, pdf]


TEXT = [{"type": "text", "text": "x"}]


@pytest.mark.parametrize(
    ("history", "fault"),
    [
        ([], "empty"),
        ([{"role": "assistant", "content": TEXT}], "'user' was expected"),
        (
            [{"role": "user", "content": TEXT}, {"role": "user", "content": TEXT}],
            "'assistant' was expected",
        ),
        ([{"role": "user", "content": TEXT}], "end with an assistant turn"),
        (
            [
                {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "Bash"}]},
                {"role": "assistant", "content": TEXT},
            ],
            "type 'tool_use'",
        ),
        (
            [
                {"role": "user", "content": TEXT},
                {"role": "assistant", "content": [{"type": "image", "source": PIXEL}]},
            ],
            "assistant turns may hold only text",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "url", "url": "u"}}],
                },
                {"role": "assistant", "content": TEXT},
            ],
            "'source' of type base64",
        ),
        ([{"role": "user", "content": []}, {"role": "assistant", "content": TEXT}], "non-empty"),
        (["hello", {"role": "assistant", "content": TEXT}], "history[0]"),
    ],
    ids=[
        "empty",
        "starts-assistant",
        "not-alternating",
        "ends-user",
        "tool_use",
        "assistant-image",
        "image-url",
        "no-blocks",
        "not-an-object",
    ],
)
def test_transcript_lines_reject_unusable_history(history: list[Any], fault: str) -> None:
    """History that does not alternate, end with assistant or hold known blocks is refused."""
    with pytest.raises(ValueError, match="history") as caught:
        transcript_lines(history, "sid", "/w", "sonnet")
    assert fault in str(caught.value)


def test_sanitized_project_dir_replaces_every_non_alphanumeric() -> None:
    """Every character but ASCII letters and digits becomes '-', one per UTF-16 unit."""
    assert sanitized_project_dir("/tmp/ccgate-run-ab_c.d") == "-tmp-ccgate-run-ab-c-d"
    assert sanitized_project_dir("/w/é") == "-w--"
    assert sanitized_project_dir("/w/😀") == "-w---"


def test_sanitized_project_dir_long_path_matches_the_real_cli() -> None:
    """Past 200 characters the name is cut and suffixed as claude 2.1.330 does (observed)."""
    path = "/tmp/tmpduefpcij/" + "ünï_" * 30 + "/" + "x" * 50 + "/" + "y" * 60 + "😀"
    observed = "-tmp-tmpduefpcij-" + "-n--" * 30 + "-" + "x" * 50 + "-" + "y" * 11 + "-s910pk"
    assert sanitized_project_dir(path) == observed
    assert len(sanitized_project_dir("/" + "a" * 199)) == 200


def test_config_dir_follows_claude_config_dir_then_home() -> None:
    """CLAUDE_CONFIG_DIR wins (relative to the run's cwd); otherwise it is $HOME/.claude."""
    assert config_dir({"HOME": "/h", "CLAUDE_CONFIG_DIR": "/cfg"}, "/run") == Path("/cfg")
    assert config_dir({"HOME": "/h", "CLAUDE_CONFIG_DIR": "rel"}, "/run") == Path("/run/rel")
    assert config_dir({"HOME": "/h", "CLAUDE_CONFIG_DIR": ""}, "/run") == Path("/h/.claude")
    assert config_dir({"HOME": "/h"}, "/run") == Path("/h/.claude")


def test_write_transcript_is_private_and_where_the_cli_looks(tmp_path: Path) -> None:
    """The file lands in projects/<sanitized real cwd>/<id>.jsonl, mode 0600, dir 0700."""
    real = tmp_path / "real_run"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    env = {"HOME": str(tmp_path / "home")}
    transcript = write_transcript(HISTORY, env=env, cwd=str(tmp_path / "link"), model="sonnet")
    expected_dir = tmp_path / "home" / ".claude" / "projects" / sanitized_project_dir(str(real))
    assert transcript.project_dir == expected_dir
    assert transcript.path == expected_dir / f"{transcript.session_id}.jsonl"
    assert stat.S_IMODE(transcript.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(expected_dir.stat().st_mode) == 0o700
    entries = _entries(transcript.path.read_text(encoding="utf-8").splitlines())
    assert [e["message"]["content"] for e in entries] == [t["content"] for t in HISTORY]
    assert {e["sessionId"] for e in entries} == {transcript.session_id}
    assert {e["cwd"] for e in entries} == {str(real)}


def test_write_transcript_never_reuses_a_project_dir(tmp_path: Path) -> None:
    """A second transcript for the same cwd is refused: a project dir belongs to one run."""
    env = {"HOME": str(tmp_path)}
    first = write_transcript(HISTORY, env=env, cwd=str(tmp_path), model="sonnet")
    with pytest.raises(FileExistsError):
        write_transcript(HISTORY, env=env, cwd=str(tmp_path), model="sonnet")
    assert [p.name for p in first.project_dir.iterdir()] == [first.path.name]


async def test_runner_history_reaches_the_cli_before_the_new_turn(
    fake_cli: Callable[..., FakeCli],
) -> None:
    """The CLI resumes a transcript of the earlier turns; only the new turn goes on stdin."""
    cli = fake_cli("echo_history")
    request = RunRequest.from_text("and now?", "sonnet", history=HISTORY)
    result = await collect(cli.runner, request)
    assert result.text == (
        "user: first question\nassistant: first answer\n"
        "user: look [image]\nassistant: a red pixel\nuser: and now?"
    )
    [run] = cli.runs()
    assert run["history"] == HISTORY
    argv = run["argv"]
    assert argv[argv.index("--resume") + 1] == result.session_id
    assert "--no-session-persistence" in argv
    assert [json.loads(line)["message"]["content"] for line in run["stdin"].splitlines()] == [
        [{"type": "text", "text": "and now?"}]
    ]


async def test_runner_history_with_unicode_line_separators_reaches_the_cli(
    fake_cli: Callable[..., FakeCli],
) -> None:
    """Earlier turns holding U+0085, U+2028 or U+2029 stay one transcript line each: the
    CLI side reads the turns back whole, not broken where those characters stand."""
    cli = fake_cli("echo_history")
    history = [
        {"role": "user", "content": [{"type": "text", "text": "a\u0085b\u2028c"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "d\u2029e"}]},
    ]
    result = await collect(cli.runner, RunRequest.from_text("next", "sonnet", history=history))
    assert result.text == "user: a\u0085b\u2028c\nassistant: d\u2029e\nuser: next"


async def test_runner_without_history_writes_no_transcript(
    fake_cli: Callable[..., FakeCli], tmp_path: Path
) -> None:
    """A run with no earlier turns gets no --resume and leaves the config dir alone."""
    cli = fake_cli("text")
    await collect(cli.runner, RunRequest.from_text("hi", "sonnet"))
    [run] = cli.runs()
    assert "--resume" not in run["argv"]
    assert "history" not in run
    assert not (tmp_path / ".claude").exists()


async def test_runner_gives_each_run_its_own_transcript(
    fake_cli: Callable[..., FakeCli], tmp_path: Path
) -> None:
    """Concurrent runs each resume their own session and see only their own earlier turns."""
    cli = fake_cli("echo_history")

    def history(word: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": word}, {"role": "assistant", "content": word + "!"}]

    first, second = await asyncio.gather(
        collect(cli.runner, RunRequest.from_text("q", "sonnet", history=history("alpha"))),
        collect(cli.runner, RunRequest.from_text("q", "sonnet", history=history("beta"))),
    )
    assert first.text == "user: alpha\nassistant: alpha!\nuser: q"
    assert second.text == "user: beta\nassistant: beta!\nuser: q"
    assert first.session_id != second.session_id
    await cli.runner.aclose()
    assert _projects(tmp_path) == []


async def test_runner_removes_the_transcript_after_success(
    fake_cli: Callable[..., FakeCli], tmp_path: Path
) -> None:
    """Once a run with history has finished, its project dir under projects/ is gone."""
    cli = fake_cli("text")
    await collect(cli.runner, RunRequest.from_text("hi", "sonnet", history=HISTORY))
    await cli.runner.aclose()  # waits for the background reaping
    assert (tmp_path / ".claude" / "projects").is_dir()
    assert _projects(tmp_path) == []
    assert list(cli.work_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("scenario", "timeout_secs", "error_type"),
    [
        ("crash", 10.0, "cli_error"),
        ("hang", 1.0, "timeout"),
        ("upstream_error", 10.0, "upstream_overloaded"),
    ],
)
async def test_runner_removes_the_transcript_after_failure(
    fake_cli: Callable[..., FakeCli],
    tmp_path: Path,
    scenario: str,
    timeout_secs: float,
    error_type: str,
) -> None:
    """A run with history that crashes, times out or fails upstream leaves no transcript."""
    cli = fake_cli(scenario, status=529)
    request = RunRequest.from_text("hi", "sonnet", history=HISTORY, timeout_secs=timeout_secs)
    with pytest.raises(RunError) as caught:
        await collect(cli.runner, request)
    assert caught.value.error_type == error_type
    assert cli.runs()[0]["history"] == HISTORY  # the transcript existed while it ran
    assert _projects(tmp_path) == []
    assert list(cli.work_dir.iterdir()) == []


async def test_runner_removes_the_transcript_after_cancel(
    fake_cli: Callable[..., FakeCli], tmp_path: Path
) -> None:
    """Cancelling a run with history mid-stream removes its transcript with the run dir."""
    cli = fake_cli("hang")  # starts a reply, then never finishes it
    request = RunRequest.from_text("hi", "sonnet", history=HISTORY)
    task = asyncio.create_task(collect(cli.runner, request))
    assert await _eventually(lambda: bool(cli.runs()), 5.0)
    await asyncio.sleep(0.3)  # past the opening lines, waiting on a silent CLI
    assert len(_projects(tmp_path)) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _projects(tmp_path) == []
    assert list(cli.work_dir.iterdir()) == []


async def test_runner_invalid_history_is_invalid_request_without_a_run(
    fake_cli: Callable[..., FakeCli], tmp_path: Path
) -> None:
    """History that ends with a user turn fails as invalid_request and starts no CLI."""
    cli = fake_cli("text")
    request = RunRequest.from_text("hi", "sonnet", history=HISTORY[:3])
    with pytest.raises(RunError) as caught:
        await collect(cli.runner, request)
    assert caught.value.error_type == "invalid_request"
    assert "end with an assistant turn" in caught.value.message
    assert cli.runs() == []
    assert _projects(tmp_path) == []
    assert list(cli.work_dir.iterdir()) == []


async def test_pooled_runner_sends_history_runs_cold(tmp_path: Path) -> None:
    """With a warm process of the same key idle, a run with history still starts its own CLI."""
    record = tmp_path / "record.jsonl"
    executable = make_fake_claude(tmp_path / "bin", "echo_history", record=str(record))
    options = CliOptions(
        executable=str(executable),
        work_dir=str(tmp_path),
        base_env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )
    runner = PooledCliRunner(options, PoolConfig(mode="fresh"))
    try:
        await collect(runner, RunRequest.from_text("warm", "haiku", owner="key-a"))
        request = RunRequest.from_text("q", "haiku", owner="key-a", history=HISTORY[:2])
        result = await collect(runner, request)
    finally:
        await runner.aclose()
    assert result.text == "user: first question\nassistant: first answer\nuser: q"
    assert runner.stats()["bypasses"] == 1
    runs = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
    served = [r for r in runs if "scenario" in r]  # idle warm processes record no turn
    assert [r["argv"].count("--resume") for r in served] == [0, 1]
