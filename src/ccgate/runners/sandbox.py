"""The optional sandbox around every CLI process: none, or bubblewrap (``bwrap``).

With ``CCGATE_SANDBOX=bwrap`` a CLI process sees a root of its own: the system directories
read-only (``/usr`` and the ``/lib``, ``/bin`` links), a few files of ``/etc`` it needs to
resolve names and check certificates, its executable, its run directory (read-write, its cwd
and TMPDIR), its config directory and ``~/.claude.json`` (read-write: the login lives there and
the CLI keeps its bookkeeping there), a private ``/proc``, ``/dev``, ``/tmp`` and an empty
``$HOME``. Nothing else of the machine: not ccgate's env file or database, not the rest of the
home directory, not the other runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pwd
import shutil
import signal
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ccgate.config import Settings
from ccgate.runners.transcript import config_dir

# Visible read-only as they are: where the executables and libraries every process needs live.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The files of /etc a CLI needs: name resolution, users, time zone, loader cache, certificates.
_ETC_ENTRIES = (
    "resolv.conf",
    "hosts",
    "host.conf",
    "nsswitch.conf",
    "gai.conf",
    "passwd",
    "group",
    "localtime",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "os-release",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "pki",
    "crypto-policies",
)
_CERT_VARIABLES = ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "SSL_CERT_DIR")
_PACKAGE_DEPTH = 3
_PROBE_TIMEOUT_SECS = 15.0
INSTALL_HINT = "install the bubblewrap package, e.g. apt-get install bubblewrap"


class Sandbox(Protocol):
    """Turns the argv of a CLI process into the argv that starts it confined."""

    def wrap(self, argv: list[str], *, run_dir: str, env: Mapping[str, str]) -> list[str]:
        """The argv to start instead of ``argv``, which runs in ``run_dir`` with ``env``."""
        ...


@dataclass(frozen=True)
class NoSandbox:
    """``CCGATE_SANDBOX=off``: the process sees what ccgate's user sees."""

    def wrap(self, argv: list[str], *, run_dir: str, env: Mapping[str, str]) -> list[str]:
        """``argv`` unchanged."""
        return list(argv)


NO_SANDBOX = NoSandbox()


@dataclass(frozen=True)
class BwrapSandbox:
    """``CCGATE_SANDBOX=bwrap``: each process in a bubblewrap root of its own (module doc)."""

    bwrap: str = "bwrap"

    def wrap(self, argv: list[str], *, run_dir: str, env: Mapping[str, str]) -> list[str]:
        """``bwrap <mounts> -- <argv>``; raises OSError when ``argv[0]`` cannot be found.

        Creates the CLI's config directory (and ``~/.claude.json``) when missing, as the CLI
        itself would on its first start, so its login and bookkeeping outlive the process.
        """
        executable = _resolve(argv[0], env)
        home = _home(env)
        args = [*self._base(), "--tmpfs", "/tmp"]  # noqa: S108 (an empty tmpfs in the sandbox)
        if home != "/":
            args += ["--tmpfs", home]  # an empty, throwaway home: the real one stays hidden
        config = config_dir(env, run_dir)
        config.mkdir(mode=0o700, parents=True, exist_ok=True)
        args += ["--bind", str(config), str(config)]
        if not env.get("CLAUDE_CONFIG_DIR"):
            # Without CLAUDE_CONFIG_DIR the CLI keeps its global state next to the directory.
            state = Path(home) / ".claude.json"
            _create(state, b"{}")
            args += ["--bind", str(state), str(state)]
        for name in _CERT_VARIABLES:
            path = env.get(name, "")
            if os.path.isabs(path):
                args += ["--ro-bind-try", path, path]
        for path in _program_paths(executable, env):
            args += ["--ro-bind", path, path]
        args += ["--bind", run_dir, run_dir, "--chdir", run_dir]
        return [*args, "--", executable, *argv[1:]]

    def _base(self) -> list[str]:
        # No --new-session: the CLI must stay in ccgate's process group so a group kill ends
        # it; it has no controlling terminal to abuse (ccgate starts every run with setsid).
        args = [
            self.bwrap,
            "--unshare-all",
            "--share-net",
            "--die-with-parent",
            "--cap-drop",
            "ALL",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
        ]
        for path in _SYSTEM_DIRS:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        for name in _ETC_ENTRIES:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        return args

    async def problem(self, env: Mapping[str, str]) -> str | None:
        """Why this sandbox cannot run here (bwrap missing, namespaces refused), or None."""
        try:
            _resolve(self.bwrap, env)
        except OSError:
            return f"bwrap is not installed ({INSTALL_HINT})"
        try:
            true = _resolve("true", env)
        except OSError:
            true = "/bin/true"
        code, detail = await run_briefly([*self._base(), "--", true], env)
        if code == 0:
            return None
        return (
            f"bwrap cannot create a sandbox on this machine ({detail or f'exit {code}'}); "
            "user namespaces may be restricted"
        )

    async def cli_problem(
        self, executable: str, env: Mapping[str, str], work_dir: str | None
    ) -> str | None:
        """Why ``executable --version`` fails inside this sandbox (a path it needs is not
        visible), or None when the CLI starts there."""
        run_dir = _probe_dir(work_dir)
        try:
            argv = self.wrap([executable, "--version"], run_dir=run_dir, env=env)
            code, detail = await run_briefly(argv, {**env, "TMPDIR": run_dir}, cwd=run_dir)
        except OSError as exc:
            code, detail = None, str(exc.strerror or exc)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        if code == 0:
            return None
        return f"the claude CLI does not start inside the sandbox: {detail or f'exit {code}'}"


def bwrap_sandbox(settings: Settings) -> BwrapSandbox:
    """The bwrap sandbox, bwrap looked up on the CLI's PATH (whatever CCGATE_SANDBOX says)."""
    return BwrapSandbox(shutil.which("bwrap", path=settings.cli_base_env.get("PATH")) or "bwrap")


def sandbox_for(settings: Settings) -> Sandbox:
    """The sandbox ``CCGATE_SANDBOX`` asks for."""
    return NO_SANDBOX if settings.sandbox == "off" else bwrap_sandbox(settings)


async def sandbox_problem(settings: Settings) -> str | None:
    """Why the configured sandbox cannot confine the CLI on this machine, or None (also when
    it is off): ``serve`` refuses to start rather than run the CLI unconfined."""
    if settings.sandbox == "off":
        return None
    problem = await bwrap_sandbox(settings).problem(settings.cli_base_env)
    return None if problem is None else f"CCGATE_SANDBOX=bwrap but {problem}"


async def run_briefly(
    argv: list[str],
    env: Mapping[str, str],
    *,
    cwd: str | None = None,
    timeout: float = _PROBE_TIMEOUT_SECS,
) -> tuple[int | None, str]:
    """Run ``argv`` to its end (at most ``timeout`` s); return its exit code and the first
    line of its output (code None: it could not start, or was killed at the timeout)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        return None, f"{argv[0]}: {exc.strerror or exc}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return None, f"no answer within {timeout:g} s"
    lines = out.decode("utf-8", "replace").strip().splitlines()
    return proc.returncode, lines[0] if lines else ""


def _probe_dir(work_dir: str | None) -> str:
    return os.path.realpath(tempfile.mkdtemp(prefix="ccgate-probe-", dir=work_dir))


def _home(env: Mapping[str, str]) -> str:
    home = env.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
    return os.path.realpath(home) if os.path.isabs(home) else "/"


def _resolve(program: str, env: Mapping[str, str]) -> str:
    """The symlink-free path of ``program`` (looked up on the env's PATH); OSError if none."""
    found = program if os.sep in program else shutil.which(program, path=env.get("PATH"))
    if found is None or not os.path.isfile(found):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    return os.path.realpath(found)


def _create(path: Path, content: bytes) -> None:
    """Create ``path`` (0600) with ``content`` unless it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as file:
        file.write(content)


def _system(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in _SYSTEM_DIRS)


def _program_paths(executable: str, env: Mapping[str, str]) -> list[str]:
    """What must be visible to run ``executable``: its package directory (an npm install
    needs the files beside it) or the file alone, and a script's interpreter."""
    paths = []
    if not _system(executable):
        package = Path(executable).parent
        for _ in range(_PACKAGE_DEPTH):
            if (package / "package.json").is_file():
                paths.append(str(package))
                break
            package = package.parent
        else:
            paths.append(executable)
    interpreter = _interpreter(executable, env)
    if interpreter is not None and not _system(interpreter):
        paths.append(interpreter)
    return paths


def _interpreter(executable: str, env: Mapping[str, str]) -> str | None:
    """The program a ``#!`` script runs (through ``env`` too), or None for a binary."""
    try:
        with open(executable, "rb") as file:
            head = file.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").split()
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-")]
    if not words:
        return None
    try:
        return _resolve(words[0], env)
    except OSError:
        return None
