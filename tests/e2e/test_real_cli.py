"""The real `ccgate serve` running the real claude CLI against a fake Anthropic API."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import StartServer, system_texts, user_texts
from tests.support.fake_anthropic import FakeAnthropic, Text, ToolUse
from tests.support.server import run_ccgate

pytestmark = pytest.mark.real_cli


def test_run_returns_upstream_text(fake: FakeAnthropic, client: httpx.Client) -> None:
    """A sync run answers the upstream's text, completed, with usage and a session id."""
    fake.reply(Text("The capital of France is Paris.", usage_in=17))

    response = client.post("/api/v1/run", json={"prompt": "What is the capital of France?"})

    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "completed"
    assert job["result"] == "The capital of France is Paris."
    assert job["error"] is None
    assert job["usage"]["input_tokens"] == 17
    assert job["usage"]["output_tokens"] > 0
    assert isinstance(job["session_id"], str)
    assert job["session_id"]


def test_run_forwards_prompt_and_system_prompt(fake: FakeAnthropic, client: httpx.Client) -> None:
    """The prompt and the `system_prompt` both reach the upstream request verbatim."""
    body = {"prompt": "Summarise: the cat sat.", "system_prompt": "You are terse. ZX-81"}

    response = client.post("/api/v1/run", json=body)

    assert response.status_code == 200, response.text
    [upstream] = fake.message_requests()
    assert "You are terse. ZX-81" in system_texts(upstream.body)
    assert "Summarise: the cat sat." in user_texts(upstream.body)


def test_lockdown_upstream_request_offers_no_tools(
    fake: FakeAnthropic, client: httpx.Client
) -> None:
    """The CLI offers the model no tools at all: the upstream `tools` list is empty."""
    response = client.post("/api/v1/run", json={"prompt": "List the files here."})

    assert response.status_code == 200, response.text
    requests = fake.message_requests()
    assert requests, "the CLI never called the upstream"
    assert all(r.body.get("tools") == [] for r in requests), [r.body.get("tools") for r in requests]


@pytest.mark.parametrize("tool", ["Bash", "Write", "WebFetch"])
def test_lockdown_hostile_tool_use_has_no_effect(
    tool: str, fake: FakeAnthropic, client: httpx.Client, tmp_path: Path
) -> None:
    """A tool_use the upstream forces on the CLI (shell, file write, fetch) does nothing."""
    marker = tmp_path / f"pwned-by-{tool}"
    calls = {
        "Bash": {"command": f"touch {marker}", "description": "touch a file"},
        "Write": {"file_path": str(marker), "content": "x"},
        "WebFetch": {"url": f"{fake.url}/pwned-by-webfetch", "prompt": "summarise"},
    }
    fake.reply(ToolUse(tool, calls[tool]))

    response = client.post("/api/v1/run", json={"prompt": "Do as the tool says."})

    # The run must end (completed or failed, not hung); the client's timeout bounds it.
    assert response.status_code in (200, 502), response.text
    assert fake.message_requests(), "the hostile tool_use was never served"
    assert not marker.exists(), f"{tool} ran: {marker} was created"
    assert not [r for r in fake.requests if "pwned-by-webfetch" in r.path]


@pytest.mark.parametrize("prompt", ["--help me", "-p", "- a list item"])
def test_prompt_leading_dash_reaches_upstream_verbatim(
    prompt: str, fake: FakeAnthropic, client: httpx.Client
) -> None:
    """A prompt that looks like a CLI flag is sent as text, not parsed as an option."""
    fake.reply(Text("flag-free answer"))

    response = client.post("/api/v1/run", json={"prompt": prompt})

    assert response.status_code == 200, response.text
    assert response.json()["result"] == "flag-free answer"
    [upstream] = fake.message_requests()
    assert prompt in user_texts(upstream.body)


def test_prompt_of_one_megabyte_reaches_upstream(fake: FakeAnthropic, client: httpx.Client) -> None:
    """A 1 MB prompt goes through the CLI to the upstream whole."""
    prompt = "".join(f"line {i:06d}: the quick brown fox jumps.\n" for i in range(27_000))
    prompt = prompt[: 1 << 20]
    assert len(prompt.encode()) == 1 << 20
    fake.reply(Text("read it all"))

    response = client.post("/api/v1/run", json={"prompt": prompt})

    assert response.status_code == 200, response.text
    assert response.json()["result"] == "read it all"
    [upstream] = fake.message_requests()
    assert prompt in user_texts(upstream.body)


def test_cli_run_prints_upstream_text(
    fake: FakeAnthropic, server_env: dict[str, str], tmp_path: Path
) -> None:
    """`ccgate run PROMPT` runs the real CLI once, without a server, and prints the answer."""
    fake.reply(Text("one-off answer from upstream"))

    done = run_ccgate(["run", "Say something."], env=server_env, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout == "one-off answer from upstream\n"
    [upstream] = fake.message_requests()
    assert "Say something." in user_texts(upstream.body)
    assert upstream.body["tools"] == []


def test_cli_run_reads_prompt_from_stdin(
    fake: FakeAnthropic, server_env: dict[str, str], tmp_path: Path
) -> None:
    """`ccgate run -` takes the prompt from stdin, so prompts may start with a dash."""
    fake.reply(Text("stdin answer"))

    done = run_ccgate(["run", "-"], env=server_env, cwd=tmp_path, stdin="--version please")

    assert done.returncode == 0, done.stderr
    assert done.stdout == "stdin answer\n"
    [upstream] = fake.message_requests()
    assert "--version please" in user_texts(upstream.body)


def test_run_uses_server_started_with_claude_on_path(
    fake: FakeAnthropic,
    start_server: StartServer,
    server_env: dict[str, str],
    claude_path: Path,
) -> None:
    """With CCGATE_CLAUDE_PATH unset, the server finds the CLI on its PATH and runs it."""
    env = {k: v for k, v in server_env.items() if k != "CCGATE_CLAUDE_PATH"}
    env["PATH"] = f"{claude_path.parent}:{env['PATH']}"
    server = start_server(env)
    fake.reply(Text("found on PATH"))

    with httpx.Client(base_url=server.url, timeout=60) as http:
        key = server.create_key("path")
        headers = {"X-API-Key": key}
        response = http.post("/api/v1/run", json={"prompt": "hi"}, headers=headers)
        ready = http.get("/readyz")

    assert response.status_code == 200, response.text
    assert response.json()["result"] == "found on PATH"
    assert ready.status_code == 200, ready.text


def test_doctor_probe_makes_one_real_call(
    fake: FakeAnthropic, server_env: dict[str, str], tmp_path: Path
) -> None:
    """`ccgate doctor --probe` checks store, CLI and version, then makes one tiny real call."""
    fake.reply(Text("pong"))

    done = run_ccgate(["doctor", "--probe"], env=server_env, cwd=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "[ok] claude CLI 2.1.330" in done.stdout
    assert "[ok] probe call answered: 'pong'" in done.stdout
    assert len(fake.message_requests()) == 1
