"""``ccgate doctor``: is this machine ready to serve, and if not, what to fix."""

from __future__ import annotations

from collections.abc import Callable

from ccgate import __version__
from ccgate.config import Settings
from ccgate.models import model_policy
from ccgate.runners.backend import backend_spec, build_backend
from ccgate.runners.base import RunError, RunRequest, collect
from ccgate.runners.cli_status import CliStatus
from ccgate.runners.pool import APPROX_RSS_MIB
from ccgate.runners.sandbox import bwrap_sandbox
from ccgate.store import Store

PROBE_PROMPT = "Reply with the single word: pong"


async def run_doctor(settings: Settings, *, probe: bool, echo: Callable[[str], None]) -> bool:
    """Print one line per check; return True when every check passed."""
    ok = True

    def report(passed: bool, what: str) -> None:
        nonlocal ok
        ok = ok and passed
        echo(f"[{'ok' if passed else 'FAIL'}] {what}")

    echo(f"ccgate {__version__}")
    report(True, "configuration is valid")
    for key in settings.unknown_keys:
        echo(f"[warn] {key} is not a ccgate setting (typo?)")
    try:
        store = await Store.open(settings.database_url)
        try:
            await store.db.ping()
        finally:
            await store.close()
        report(True, f"store is reachable and writable ({settings.database_url.split('://')[0]})")
    except Exception as exc:
        report(False, f"store at {settings.database_url}: {type(exc).__name__}: {exc}")
    cli = await CliStatus(settings).refresh()
    spec = backend_spec(settings)
    needs_cli = spec.capabilities.needs_cli
    if not needs_cli:
        echo(f"[info] backend: {spec.describe(settings)}")
        echo(
            f"[info] claude CLI: {cli.problem or f'{cli.version} at {cli.path}'} (not used "
            f"by the {spec.title} backend)"
        )
    elif cli.problem:
        report(False, cli.problem)
    else:
        report(True, f"claude CLI {cli.version} at {cli.path}")
    if settings.allow_tools:
        echo("[warn] CCGATE_ALLOW_TOOLS=true: the model may run commands on this machine")
    if needs_cli:
        await _check_sandbox(settings, cli.path if not cli.problem else None, report, echo)
    echo(pool_line(settings))
    if settings.admin_token is None:
        echo("[info] CCGATE_ADMIN_TOKEN is unset: the admin API is off")
    if probe and (not needs_cli or (cli.path and not cli.problem)):
        await _probe(settings, cli.path, report)
    return ok


async def _probe(
    settings: Settings, cli_path: str | None, report: Callable[[bool, str], None]
) -> None:
    """One tiny real call through the backend ``serve`` would build."""
    backend = build_backend(settings, cli_path=cli_path)
    request = RunRequest.from_text(
        PROBE_PROMPT,
        model_policy(
            settings.allowed_models,
            settings.default_model,
            settings.model_aliases,
            full_ids=backend.capabilities.full_model_ids,
        ).target(settings.default_model),
        timeout_secs=120,
        idle_timeout_secs=60,
    )
    try:
        result = await collect(backend.runner, request)
        report(True, f"probe call answered: {result.text.strip()[:60]!r}")
    except RunError as exc:
        report(False, f"probe call failed: {exc.error_type}: {exc.message}")
    finally:
        await backend.aclose()


async def _check_sandbox(
    settings: Settings,
    cli_path: str | None,
    report: Callable[[bool, str], None],
    echo: Callable[[str], None],
) -> None:
    """Whether the sandbox is on, works here (a ``bwrap ... true`` probe) and lets the CLI
    start; with it off, whether turning it on would work."""
    sandbox = bwrap_sandbox(settings)
    problem = await sandbox.problem(settings.cli_base_env)
    if settings.sandbox == "off":
        verdict = (
            "bwrap works here: CCGATE_SANDBOX=bwrap would confine the CLI"
            if problem is None
            else f"CCGATE_SANDBOX=bwrap would not work: {problem}"
        )
        echo(f"[info] sandbox: off (CCGATE_SANDBOX=off); {verdict}")
        return
    if problem is not None:
        report(False, f"sandbox: {problem}; serve refuses to start")
        return
    report(True, f"sandbox: bwrap works on this machine ({sandbox.bwrap})")
    if cli_path is not None:
        cli_problem = await sandbox.cli_problem(cli_path, settings.cli_base_env, settings.work_dir)
        report(cli_problem is None, f"sandbox: {cli_problem or 'the claude CLI starts in it'}")


def pool_line(settings: Settings) -> str:
    """One line on the warm pool's settings and the memory they allow (docs/pool.md)."""
    if settings.pool_mode == "off":
        return "[info] warm pool: off (CCGATE_POOL_MODE=off): every run starts the CLI cold"
    budget = settings.pool_max_processes * APPROX_RSS_MIB
    return (
        f"[info] warm pool: mode={settings.pool_mode}, up to "
        f"{settings.pool_max_processes} processes (~{budget} MiB), "
        f"{settings.pool_min_idle} idle per active key, idle expiry "
        f"{settings.pool_idle_secs:g} s, max {settings.pool_max_requests} requests each"
    )
