"""The deployment files: the Dockerfile (hadolint, its health check against a real server),
.dockerignore, the container entrypoint, compose.yaml (`docker compose config`) and the
systemd units (`systemd-analyze verify`). No image is built here: there is no container
engine on the test machines."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import service_missing
from tests.support.fake_claude_factory import make_fake_claude
from tests.support.server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "docker-entrypoint.sh"
UNITS = {
    "system": ROOT / "deploy/systemd/ccgate.service",
    "user": ROOT / "deploy/systemd/ccgate-user.service",
}
# Where each unit expects ccgate installed; the verify test points it at this checkout's.
UNIT_EXEC = {
    "system": "/opt/ccgate/venv/bin/ccgate",
    "user": "%h/.local/share/ccgate/venv/bin/ccgate",
}
TOOL_TIMEOUT_SECS = 60


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (words[0].upper(), words[1].strip() if len(words) > 1 else "")
        for line in lines
        if line and not line.startswith("#")
        for words in [line.split(None, 1)]
    ]


def _tool(name: str) -> str | None:
    """An executable installed next to this interpreter (the [dev] extra), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _compose_command() -> list[str]:
    """`docker compose`, or the compose binary scripts/test.sh unpacks; else skip."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run(
            [docker, "compose", "version"],
            capture_output=True,
            check=False,
            timeout=TOOL_TIMEOUT_SECS,
        ).returncode
        == 0
    ):
        return [docker, "compose"]
    binary = ROOT / ".tools" / "bin" / "docker-compose"
    if binary.exists():
        return [str(binary)]
    service_missing("docker compose is not installed (scripts/test.sh unpacks it into .tools/bin)")
    raise AssertionError("unreachable")


def _compose_config(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`docker compose config` of compose.yaml with only ``env`` (no .env file is read)."""
    empty = tmp_path / "empty.env"
    empty.write_text("", encoding="utf-8")
    return subprocess.run(
        [
            *_compose_command(),
            "-f",
            str(ROOT / "compose.yaml"),
            "--env-file",
            str(empty),
            "config",
            "--format",
            "json",
        ],
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=TOOL_TIMEOUT_SECS,
    )


def _compose_services(tmp_path: Path) -> dict[str, Any]:
    """The services of compose.yaml as `docker compose config` resolves them."""
    done = _compose_config(tmp_path, POSTGRES_PASSWORD="not-a-real-password")
    assert done.returncode == 0, done.stderr
    services: dict[str, Any] = json.loads(done.stdout)["services"]
    return services


def _healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    """Run the Dockerfile's HEALTHCHECK command as the container would, against ``port``."""
    args = next(a for keyword, a in _instructions() if keyword == "HEALTHCHECK")
    argv = json.loads(args[args.index("CMD") + len("CMD") :].strip())
    assert argv[0] == "python"
    return subprocess.run(
        [sys.executable, *argv[1:]],
        env={"CCGATE_PORT": str(port)},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def _entrypoint(tmp_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """Run the container entrypoint with the login mount and config dir under ``tmp_path``."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path / "home"),
        "CLAUDE_LOGIN_MOUNT": str(tmp_path / "login"),
        "CLAUDE_CONFIG_DIR": str(tmp_path / "home" / ".claude"),
    }
    return subprocess.run(
        ["/bin/sh", str(ENTRYPOINT), *command],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def _login(tmp_path: Path, content: str) -> Path:
    """An operator's CLI login at the mount point; returns its credentials file."""
    (tmp_path / "login").mkdir(exist_ok=True)
    original = tmp_path / "login" / ".credentials.json"
    original.write_text(content, encoding="utf-8")
    return original


def test_dockerfile_passes_hadolint() -> None:
    """hadolint finds nothing in the Dockerfile, not even at info level."""
    hadolint = _tool("hadolint")
    if hadolint is None:
        service_missing("hadolint is not installed (pip install -e '.[dev]' brings it)")
        return
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=TOOL_TIMEOUT_SECS,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_dockerfile_pins_the_cli_version_the_tests_use() -> None:
    """The image installs the same claude CLI version scripts/test.sh tests against."""
    tested = re.search(
        r'^CLAUDE_CODE_VERSION="([^"]+)"$',
        (ROOT / "scripts/test.sh").read_text(encoding="utf-8"),
        re.MULTILINE,
    )
    assert tested is not None
    assert ("ARG", f"CLAUDE_CODE_VERSION={tested.group(1)}") in _instructions()


def test_dockerfile_runs_as_a_non_root_user() -> None:
    """The final stage's USER is a numeric uid other than 0, defaulting to 10001."""
    instructions = _instructions()
    final = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    users = [args for keyword, args in instructions[final:] if keyword == "USER"]
    args = dict(a.split("=", 1) for k, a in instructions[final:] if k == "ARG" and "=" in a)
    assert users == ["${APP_UID}:${APP_GID}"]
    assert args["APP_UID"] == "10001" and args["APP_GID"] == "10001"


def test_dockerfile_healthcheck_passes_on_a_ready_server(tmp_path: Path) -> None:
    """The image's health check succeeds against a ccgate whose /readyz answers 200."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "CCGATE_CLAUDE_PATH": str(make_fake_claude(tmp_path / "fake-claude")),
        "CCGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ccgate.db'}",
    }
    with ServerProcess(env, tmp_path / "server") as server:
        done = _healthcheck(server.port)
    assert done.returncode == 0, done.stderr


def test_dockerfile_healthcheck_fails_while_not_ready(tmp_path: Path) -> None:
    """The image's health check fails while /readyz answers 503 (no claude CLI found)."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "CCGATE_CLAUDE_PATH": str(tmp_path / "missing" / "claude"),
        "CCGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ccgate.db'}",
    }
    with ServerProcess(env, tmp_path / "server") as server:
        done = _healthcheck(server.port)
    assert done.returncode != 0 and "503" in done.stderr


def test_dockerignore_admits_only_what_the_dockerfile_copies() -> None:
    """The build context excludes everything but the Dockerfile's own COPY sources, so no
    env file, database, login or virtual environment can reach an image."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    admitted = {p[1:] for p in patterns if p.startswith("!")}
    copied = {
        source
        for keyword, args in _instructions()
        if keyword == "COPY" and "--from=" not in args
        for source in args.split()[:-1]
        if not source.startswith("--")
    }
    assert patterns[0] == "*"
    assert admitted == copied
    assert all((ROOT / source).exists() for source in copied)


def test_entrypoint_copies_the_login_and_never_writes_the_original(tmp_path: Path) -> None:
    """The CLI login is copied (mode 0600) to the config dir; what the CLI writes there
    never reaches the mounted original."""
    original = _login(tmp_path, '{"token": "original"}')
    refresh = 'echo \'{"token": "refreshed"}\' > "$CLAUDE_CONFIG_DIR/.credentials.json"'
    done = _entrypoint(tmp_path, "/bin/sh", "-c", refresh)
    copy = tmp_path / "home" / ".claude" / ".credentials.json"
    assert done.returncode == 0, done.stderr
    assert original.read_text(encoding="utf-8") == '{"token": "original"}'
    assert copy.read_text(encoding="utf-8").strip() == '{"token": "refreshed"}'
    assert copy.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "home" / ".claude").stat().st_mode & 0o777 == 0o700


def test_entrypoint_keeps_a_refreshed_copy_over_an_older_original(tmp_path: Path) -> None:
    """On a restart, tokens the CLI refreshed in the copy are kept, not reset to the original."""
    original = _login(tmp_path, "original")
    assert _entrypoint(tmp_path, "true").returncode == 0
    copy = tmp_path / "home" / ".claude" / ".credentials.json"
    copy.write_text("refreshed", encoding="utf-8")
    os.utime(original, (1_000_000_000, 1_000_000_000))
    done = _entrypoint(tmp_path, "true")
    assert done.returncode == 0 and "copied" not in done.stderr
    assert copy.read_text(encoding="utf-8") == "refreshed"


def test_entrypoint_takes_a_newer_original_login(tmp_path: Path) -> None:
    """A login renewed on the host (newer than the copy) replaces the copy at the next start."""
    _login(tmp_path, "first")
    assert _entrypoint(tmp_path, "true").returncode == 0
    copy = tmp_path / "home" / ".claude" / ".credentials.json"
    os.utime(copy, (1_000_000_000, 1_000_000_000))
    _login(tmp_path, "renewed")
    done = _entrypoint(tmp_path, "true")
    assert done.returncode == 0 and "copied .credentials.json" in done.stderr
    assert copy.read_text(encoding="utf-8") == "renewed"


def test_entrypoint_runs_the_command_without_a_login(tmp_path: Path) -> None:
    """With no login mounted (an API key or token in the environment instead) the command
    runs as given, and its exit status is the container's."""
    done = _entrypoint(tmp_path, "/bin/sh", "-c", "echo started; exit 7")
    assert (done.returncode, done.stdout) == (7, "started\n")
    assert not (tmp_path / "home" / ".claude" / ".credentials.json").exists()


def test_compose_config_is_valid_with_two_nodes_behind_the_balancer(tmp_path: Path) -> None:
    """`docker compose config` accepts compose.yaml: two ccgate nodes on PostgreSQL and Redis,
    each health-checked on /readyz, and the balancer waits for both."""
    services = _compose_services(tmp_path)
    nodes = sorted(name for name in services if name.startswith("ccgate-"))
    assert nodes == ["ccgate-1", "ccgate-2"]
    for node in nodes:
        environment = services[node]["environment"]
        assert environment["CCGATE_DATABASE_URL"].startswith("postgresql://")
        assert environment["CCGATE_REDIS_URL"] == "redis://redis:6379/0"
        assert "/readyz" in " ".join(services[node]["healthcheck"]["test"])
    waits = {name: c["condition"] for name, c in services["lb"]["depends_on"].items()}
    assert waits == dict.fromkeys(nodes, "service_healthy")
    assert all("healthcheck" in services[name] for name in ("postgres", "redis", "lb"))


def test_compose_config_refuses_to_run_without_a_database_password(tmp_path: Path) -> None:
    """compose.yaml holds no default secret: without POSTGRES_PASSWORD it does not resolve."""
    done = _compose_config(tmp_path)
    assert done.returncode != 0
    assert "POSTGRES_PASSWORD" in done.stderr


def test_compose_nodes_trust_only_the_balancer(tmp_path: Path) -> None:
    """The nodes believe X-Forwarded-For from the balancer's fixed address alone, and the
    balancer's upstreams are exactly the nodes."""
    services = _compose_services(tmp_path)
    balancer = services["lb"]["networks"]["ccgate"]["ipv4_address"]
    upstreams = re.findall(
        r"^\s*server (\S+):8787\b", (ROOT / "deploy/nginx.conf").read_text(), re.MULTILINE
    )
    assert {services[n]["environment"]["CCGATE_TRUSTED_PROXIES"] for n in upstreams} == {balancer}
    assert sorted(upstreams) == sorted(n for n in services if n.startswith("ccgate-"))


@pytest.mark.parametrize("kind", sorted(UNITS))
def test_systemd_unit_passes_systemd_analyze_verify(kind: str, tmp_path: Path) -> None:
    """`systemd-analyze verify` reports nothing for the unit, with ccgate installed where it
    expects (this checkout's venv stands in for it)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: systemd is not on this machine")
    unit = tmp_path / UNITS[kind].name
    text = UNITS[kind].read_text(encoding="utf-8")
    unit.write_text(
        text.replace(UNIT_EXEC[kind], str(Path(sys.executable).parent / "ccgate")), encoding="utf-8"
    )
    (tmp_path / "run").mkdir(mode=0o700)
    scope = ["--user"] if kind == "user" else []
    done = subprocess.run(
        [analyze, *scope, "verify", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=TOOL_TIMEOUT_SECS,
        env={
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        },
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("kind", sorted(UNITS))
def test_systemd_unit_is_hardened(kind: str) -> None:
    """The unit restarts on failure, reads an EnvironmentFile, and runs hardened with only
    its data directory writable."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS[kind], encoding="utf-8")
    service = parser["Service"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert service["Restart"] == "on-failure"
    assert service["KillMode"] == "mixed"
    assert service["EnvironmentFile"].endswith("/ccgate.env")
    data_dir = service["WorkingDirectory"]
    assert data_dir in service["ReadWritePaths"].split()
    assert data_dir in service["Environment"]
