"""The ``ccgate`` command: keys, config errors, version, migrate, doctor."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ccgate.clock import utcnow
from ccgate.store import JobStatus, Store
from tests.support.fake_anthropic import FAKE_API_KEY, FakeAnthropic, Text

Ccgate = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def ccgate(tmp_path: Path) -> Ccgate:
    """Run ``python -m ccgate ...`` with a database in tmp_path and a clean environment."""

    def run(
        *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        base = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "CCGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        }
        return subprocess.run(
            [sys.executable, "-m", "ccgate", *args],
            env={**base, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
            input=stdin,
            cwd=tmp_path,
            check=False,
        )

    return run


def test_cli_keys_create_prints_secret_once(ccgate: Ccgate) -> None:
    """``keys create`` prints the secret alone on stdout; ``keys list`` never shows it."""
    created = ccgate("keys", "create", "my-app")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("ccg_") and "shown only now" in created.stderr
    listed = ccgate("keys", "list")
    assert "my-app" in listed.stdout and "active" in listed.stdout
    assert secret not in listed.stdout and secret[:12] in listed.stdout


def test_cli_keys_duplicate_and_bad_names_fail(ccgate: Ccgate) -> None:
    """A taken or malformed name exits 1 with a clear message."""
    assert ccgate("keys", "create", "app").returncode == 0
    again = ccgate("keys", "create", "app")
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = ccgate("keys", "create", "-bad name")
    assert bad.returncode != 0


async def test_cli_keys_revoke_cancels_the_keys_queued_jobs(ccgate: Ccgate, tmp_path: Path) -> None:
    """``keys revoke`` also cancels the key's queued jobs in the store, so a running server
    never starts them, and says how many it cancelled."""
    assert (await asyncio.to_thread(ccgate, "keys", "create", "app")).returncode == 0
    store = await Store.open(f"sqlite:///{tmp_path / 'cli.db'}")
    try:
        key = await store.keys.by_name("app")
        assert key is not None
        await store.jobs.insert(
            job_id="job_waiting",
            key_id=key.id,
            door="native",
            model="sonnet",
            request={"prompt": "hi"},
            metadata=None,
            now=utcnow(),
        )
        revoked = await asyncio.to_thread(ccgate, "keys", "revoke", "app")
        assert revoked.returncode == 0, revoked.stderr
        assert "cancelled 1 job(s)" in revoked.stdout
        job = await store.jobs.get("job_waiting")
        assert job is not None and job.status is JobStatus.CANCELLED
        assert job.error_message is not None and "revoked" in job.error_message
    finally:
        await store.close()


def test_cli_keys_revoke(ccgate: Ccgate) -> None:
    """``keys revoke`` marks the key revoked; revoking an unknown key exits 1."""
    ccgate("keys", "create", "app")
    assert ccgate("keys", "revoke", "app").returncode == 0
    assert "revoked" in ccgate("keys", "list").stdout
    missing = ccgate("keys", "revoke", "nope")
    assert missing.returncode == 1 and "no active key" in missing.stderr


def test_cli_config_error_exits_2_naming_the_key(ccgate: Ccgate) -> None:
    """A bad setting stops any command with exit 2 and names key, value and allowed."""
    result = ccgate("serve", env={"CCGATE_PORT": "99999"})
    assert result.returncode == 2
    assert "CCGATE_PORT='99999'" in result.stderr and "between 1 and 65535" in result.stderr


def test_cli_env_file_option(ccgate: Ccgate, tmp_path: Path) -> None:
    """``--env-file`` supplies settings; a bad value in it is reported like any other."""
    env_file = tmp_path / "bad.env"
    env_file.write_text("CCGATE_CONCURRENCY=lots\n")
    result = ccgate("--env-file", str(env_file), "version")
    assert result.returncode == 2 and "CCGATE_CONCURRENCY" in result.stderr


def test_cli_version_and_migrate(ccgate: Ccgate) -> None:
    """``version`` prints the version; ``migrate`` creates the schema."""
    assert ccgate("version").stdout.startswith("ccgate ")
    migrated = ccgate("migrate")
    assert migrated.returncode == 0 and "up to date" in migrated.stdout


def test_cli_doctor_flags_missing_cli(ccgate: Ccgate, tmp_path: Path) -> None:
    """``doctor`` exits 1 and says how to install the CLI when it is missing."""
    result = ccgate("doctor", env={"CCGATE_CLAUDE_PATH": str(tmp_path / "none")})
    assert result.returncode == 1
    assert "[ok] store is reachable" in result.stdout
    assert "[FAIL] claude CLI not found" in result.stdout


def test_cli_doctor_shows_pool_settings_and_memory_bound(ccgate: Ccgate, tmp_path: Path) -> None:
    """``doctor`` prints the pool mode, its process cap and the memory that cap allows."""
    result = ccgate(
        "doctor",
        env={
            "CCGATE_CLAUDE_PATH": str(tmp_path / "none"),
            "CCGATE_POOL_MODE": "reuse",
            "CCGATE_POOL_MAX_PROCESSES": "3",
        },
    )
    assert "[info] warm pool: mode=reuse, up to 3 processes (~600 MiB)" in result.stdout


def test_cli_keys_webhook_secret_is_shown_once_and_rotates(ccgate: Ccgate) -> None:
    """A new key's webhook secret goes to stderr once; ``keys webhook-secret`` prints a new one."""
    created = ccgate("keys", "create", "app")
    first = created.stderr.rsplit(": ", 1)[1].strip()
    assert first.startswith("whsec_")
    rotated = ccgate("keys", "webhook-secret", "app")
    assert rotated.returncode == 0
    second = rotated.stdout.strip()
    assert second.startswith("whsec_") and second != first
    assert first not in ccgate("keys", "list").stdout
    missing = ccgate("keys", "webhook-secret", "nope")
    assert missing.returncode == 1


def test_cli_keys_create_with_policy_shows_it_in_list(ccgate: Ccgate) -> None:
    """``keys create`` takes every limit option and ``keys list`` shows the policy."""
    created = ccgate(
        "keys",
        "create",
        "app",
        "--rpm",
        "60",
        "--rpd",
        "1000",
        "--tokens-per-day",
        "5000",
        "--budget-usd",
        "2.5",
        "--concurrency",
        "2",
        "--model",
        "haiku",
        "--model",
        "claude-*",
        "--ip-cidr",
        "10.1.2.3/8",
        "--expires-at",
        "2999-01-01",
    )
    assert created.returncode == 0, created.stderr
    listed = ccgate("keys", "list").stdout
    assert (
        "rpm=60 rpd=1000 tokens-per-day=5000 budget-usd=2.5 concurrency=2 "
        "model=haiku,claude-* ip-cidr=10.0.0.0/8 expires-at=2999-01-01 00:00"
    ) in listed
    bad = ccgate("keys", "create", "other", "--ip-cidr", "not-a-network")
    assert bad.returncode == 2 and "--ip-cidr" in bad.stderr
    assert "other" not in ccgate("keys", "list").stdout


def test_cli_keys_update_changes_and_clears_limits(ccgate: Ccgate) -> None:
    """``keys update`` sets the options given and ``--clear`` removes a limit."""
    ccgate("keys", "create", "app", "--rpm", "60", "--model", "haiku")
    updated = ccgate("keys", "update", "app", "--rpd", "10", "--clear", "rpm")
    assert updated.returncode == 0, updated.stderr
    assert "rpd=10 model=haiku" in updated.stdout and "rpm=" not in updated.stdout
    assert "rpd=10 model=haiku" in ccgate("keys", "list").stdout


def test_cli_keys_update_refuses_bad_input(ccgate: Ccgate) -> None:
    """Bad values, unknown --clear fields, no changes and unknown keys each fail clearly."""
    ccgate("keys", "create", "app")
    for args, message in (
        (["--rpm", "0"], "--rpm: must be a whole number"),
        (["--expires-at", "2001-01-01"], "must be in the future"),
        (["--clear", "colour"], "not a limit"),
        (["--rpm", "5", "--clear", "rpm"], "contradict"),
        ([], "nothing to change"),
    ):
        result = ccgate("keys", "update", "app", *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    missing = ccgate("keys", "update", "nope", "--rpm", "5")
    assert missing.returncode == 1 and "no active key" in missing.stderr


def test_doctor_probes_the_api_backend(ccgate: Any) -> None:
    """On the API backend doctor does not need the CLI and its probe calls the API."""
    with FakeAnthropic() as fake:
        fake.reply(Text("pong"))
        done = ccgate(
            "doctor",
            "--probe",
            env={
                "CCGATE_BACKEND": "api",
                "ANTHROPIC_BASE_URL": fake.url,
                "ANTHROPIC_API_KEY": FAKE_API_KEY,
                "CCGATE_CLAUDE_PATH": "/nonexistent",
            },
        )
        sent = fake.message_requests()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "probe call answered: 'pong'" in done.stdout
    assert "not used by the API backend" in done.stdout
    assert sent[0].headers.get("x-api-key") == FAKE_API_KEY


def test_cli_run_honours_the_api_backend(ccgate: Any) -> None:
    """``ccgate run`` builds the server's backend: with CCGATE_BACKEND=api it calls the API
    with the operator's key (full model id) and needs no CLI."""
    with FakeAnthropic() as fake:
        fake.reply(Text("hello from the API"))
        done = ccgate(
            "run",
            "hi",
            "--model",
            "sonnet",
            env={
                "CCGATE_BACKEND": "api",
                "ANTHROPIC_BASE_URL": fake.url,
                "ANTHROPIC_API_KEY": FAKE_API_KEY,
                "CCGATE_CLAUDE_PATH": "/nonexistent",
            },
        )
        sent = fake.message_requests()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "hello from the API"
    assert len(sent) == 1 and sent[0].headers.get("x-api-key") == FAKE_API_KEY
    assert sent[0].body["model"] != "sonnet" and "sonnet" in sent[0].body["model"]
