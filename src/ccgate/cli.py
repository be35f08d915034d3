"""The ``ccgate`` command: serve, keys, doctor, run, migrate, version."""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from ccgate import __version__
from ccgate.config import ConfigError, Settings, load_settings
from ccgate.logs import configure_logging
from ccgate.policy import POLICY_FIELDS, KeyPolicy, PolicyError, policy_with

app = typer.Typer(
    help="ccgate: a self-hosted gateway for the Claude Code CLI.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(
    help="Create, list, update and revoke per-app API keys.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")

T = TypeVar("T")
EnvFile = Annotated[
    str | None,
    typer.Option("--env-file", help="Read settings from this KEY=VALUE file (real env vars win)."),
]


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def _run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro())  # type: ignore[arg-type]


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"ccgate: {message}", err=True)
    raise typer.Exit(code)


@app.callback()
def main_options(ctx: typer.Context, env_file: EnvFile = None) -> None:
    """Load and validate the configuration before any command runs."""
    if ctx.resilient_parsing:
        return
    try:
        ctx.obj = load_settings(env_file=env_file)
    except ConfigError as exc:
        _fail(f"configuration error: {exc}", 2)


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Override CCGATE_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Override CCGATE_PORT.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Override CCGATE_WORKERS: server processes on one port; more than 1 needs "
            "PostgreSQL and CCGATE_REDIS_URL.",
        ),
    ] = None,
    worker_of: Annotated[int | None, typer.Option(hidden=True)] = None,
    socket_fd: Annotated[list[int] | None, typer.Option(hidden=True)] = None,
    ready_fd: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Serve the HTTP API (SQLite in ./ccgate.db unless CCGATE_DATABASE_URL says otherwise)."""
    settings = _settings(ctx)
    configure_logging(settings.log_level, settings.log_format)
    if worker_of is not None:
        # One of the processes ``--workers N`` started, on the socket(s) it inherited.
        _serve_one(settings, worker_of=worker_of, sockets=socket_fd or [], ready_fd=ready_fd)
        return
    count = workers if workers is not None else settings.workers
    if count > 1:
        from ccgate.supervisor import workers_problem

        problem = workers_problem(settings, count)
        if problem is not None:
            _fail(problem, 2)
    import structlog

    log = structlog.get_logger("ccgate")
    for key in settings.unknown_keys:
        log.warning("unknown_setting", key=key, detail="not a ccgate setting; check for typos")
    log.info(
        "starting",
        version=__version__,
        host=host or settings.host,
        port=port or settings.port,
        database=settings.database_url.split("://")[0],
        **({"workers": count} if count > 1 else {}),
    )
    from ccgate.runners.backend import backend_spec

    if backend_spec(settings).capabilities.needs_cli:
        from ccgate.runners.sandbox import sandbox_problem

        # Never run the CLI unconfined when a sandbox was asked for.
        problem = _run(lambda: sandbox_problem(settings))
        if problem is not None:
            _fail(problem)
    if count == 1:
        _serve_one(settings, host=host or settings.host, port=port or settings.port)
        return
    from ccgate.store import Store
    from ccgate.supervisor import serve_workers

    async def migrate_once() -> None:
        # Here, before any worker starts, so workers never race each other's migrations.
        store = await Store.open(settings.database_url)
        await store.close()

    _run(migrate_once)
    env_file = ["--env-file", settings.env_file] if settings.env_file else []
    code = serve_workers(
        settings,
        workers=count,
        host=host or settings.host,
        port=port or settings.port,
        command=[sys.executable, "-m", "ccgate", *env_file, "serve"],
        log=log,
    )
    if code:
        raise typer.Exit(code)


def _serve_one(
    settings: Settings,
    *,
    host: str = "",
    port: int = 0,
    worker_of: int | None = None,
    sockets: list[int] | None = None,
    ready_fd: int | None = None,
) -> None:
    """Run one server process: on ``host``:``port``, or as a worker on inherited sockets."""
    import socket

    import uvicorn

    from ccgate import tracing
    from ccgate.api.app import create_app
    from ccgate.http_protocol import CoalescingHttpToolsProtocol
    from ccgate.server import GatewayServer

    tracing.configure_tracing(settings.otel_exporter_otlp_endpoint)
    gateway = create_app(settings)

    def stop_taking_jobs() -> None:
        services = getattr(gateway.state, "services", None)  # None until the lifespan began
        if services is not None:
            services.shutdown()

    # The stock asyncio loop, even where uvloop is installed: uvloop's subprocess handling
    # measured ~9 ms slower per CLI run (docs/benchmarks.md); on the API backend it measured
    # no faster once the upstream client was ccgate's own (docs/benchmarks.md).
    # proxy_headers off and no forwarded_allow_ips (so FORWARDED_ALLOW_IPS is never read):
    # uvicorn would otherwise rewrite the client address from X-Forwarded-For before
    # CCGATE_TRUSTED_PROXIES is consulted; security/netrules.py is the only reader of it.
    # http: uvicorn's httptools protocol, each answer's headers and first bytes in one write.
    config = uvicorn.Config(
        gateway,
        http=CoalescingHttpToolsProtocol,
        host=host,
        port=port,
        loop="asyncio",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        forwarded_allow_ips=[],
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_secs)),
    )
    server = GatewayServer(config, stop_taking_jobs, worker_of=worker_of, ready_fd=ready_fd)
    try:
        if worker_of is None:
            server.run()
        else:
            server.run(sockets=[socket.socket(fileno=fd) for fd in sockets or []])
    finally:
        tracing.shutdown_tracing()


@app.command()
def version() -> None:
    """Print ccgate's version."""
    typer.echo(f"ccgate {__version__}")


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Create or upgrade the database schema (serve does this on start too)."""
    from ccgate.store import Store

    async def go() -> None:
        store = await Store.open(_settings(ctx).database_url)
        await store.close()

    _run(go)
    typer.echo("database schema is up to date")


def _with_keyring(ctx: typer.Context, action: Callable[[Any], Awaitable[T]]) -> T:
    from ccgate.security.keyring import Keyring
    from ccgate.store import Store

    async def go() -> T:
        store = await Store.open(_settings(ctx).database_url)
        try:
            return await action(Keyring(store))
        finally:
            await store.close()

    return _run(go)


Clear = Annotated[
    list[str] | None,
    typer.Option(
        "--clear", help="Remove a limit, by option name (rpm, budget-usd, model, ...); repeatable."
    ),
]

# Policy field -> the option that sets it, for messages, --clear and the list's POLICY column.
_OPTION_OF = {f.name: f.option for f in POLICY_FIELDS}
# The command parameter each option fills -> its policy field.
_FIELD_OF_PARAM = {f.option.replace("-", "_"): f.name for f in POLICY_FIELDS}


def _with_policy_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a ``keys`` command one option per policy field (from ccgate.policy's table),
    before its own options; the command gets them in ``**given``, by parameter name."""
    own = [
        p
        for p in inspect.signature(command, eval_str=True).parameters.values()
        if p.kind is not p.VAR_KEYWORD
    ]
    at = next((i for i, p in enumerate(own) if p.default is not p.empty), len(own))
    options = [
        inspect.Parameter(
            param,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                spec.kind.cli_type | None, typer.Option(f"--{spec.option}", help=spec.option_help)
            ],
        )
        for spec, param in zip(POLICY_FIELDS, _FIELD_OF_PARAM, strict=True)
    ]
    later = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[at:]]
    params = [*own[:at], *options, *later]

    @functools.wraps(command)
    def run(**kwargs: Any) -> None:
        command(**kwargs)

    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


def _policy_changes(given: dict[str, Any]) -> dict[str, object]:
    return {_FIELD_OF_PARAM[k]: v for k, v in given.items() if v not in (None, [])}


def _policy_error(exc: Any) -> None:
    _fail(f"--{_OPTION_OF.get(exc.field, exc.field)}: {exc.message}", 2)


def _policy_text(policy: Any) -> str:
    parts = []
    for field, option in _OPTION_OF.items():
        value = getattr(policy, field)
        if isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, float):
            value = f"{value:g}"
        elif field == "expires_at" and value is not None:
            value = _short(value)
        if value is not None:
            parts.append(f"{option}={value}")
    return " ".join(parts) or "-"


@keys_app.command("create")
@_with_policy_options
def keys_create(ctx: typer.Context, name: str, **given: Any) -> None:
    """Create a key, with limits if given; its secret is printed once and never stored."""
    from ccgate.security.keyring import KeyNameError

    try:
        policy = policy_with(KeyPolicy(), _policy_changes(given))
    except PolicyError as exc:
        _policy_error(exc)
        return
    try:
        created = _with_keyring(ctx, lambda ring: ring.create(name, policy))
    except KeyNameError as exc:
        _fail(str(exc))
        return
    typer.echo(f"Created key {name!r}. Its secret is shown only now; store it safely:", err=True)
    typer.echo(created.secret)
    typer.echo(f"Webhook signing secret (also shown only now): {created.webhook_secret}", err=True)


@keys_app.command("list")
def keys_list(ctx: typer.Context) -> None:
    """List keys: name, prefix, created, last used, status, policy (never secrets)."""
    records = _with_keyring(ctx, lambda ring: ring.list())
    if not records:
        typer.echo("no keys yet: create one with 'ccgate keys create NAME'")
        return
    from ccgate.clock import utcnow

    rows = [("NAME", "PREFIX", "CREATED", "LAST USED", "STATUS", "POLICY")]
    for r in records:
        status = "expired" if r.expired(utcnow()) else "active"
        rows.append(
            (
                r.name,
                r.prefix + "…",
                _short(r.created_at),
                _short(r.last_used_at),
                status if r.active else f"revoked {_short(r.revoked_at)}",
                _policy_text(r.policy),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@keys_app.command("webhook-secret")
def keys_webhook_secret(ctx: typer.Context, name: str) -> None:
    """Give a key a new webhook signing secret, printed once; the old one keeps signing next
    to it for CCGATE_WEBHOOK_ROTATION_GRACE_SECS."""
    grace = _settings(ctx).webhook_rotation_grace_secs
    secret = _with_keyring(ctx, lambda ring: ring.rotate_webhook_secret(name, grace))
    if secret is None:
        _fail(f"no active key named {name!r}")
    when = (
        f"the old one keeps signing next to it for {grace:g} s"
        if grace > 0
        else "the old one stopped signing"
    )
    typer.echo(
        f"New webhook signing secret for {name!r} ({when}); switch receivers to it:", err=True
    )
    typer.echo(secret)


@keys_app.command("update")
@_with_policy_options
def keys_update(ctx: typer.Context, name: str, clear: Clear = None, **given: Any) -> None:
    """Change an active key's limits; its very next request obeys them, no restart needed."""
    changes = _policy_changes(given)
    fields = {option: field for field, option in _OPTION_OF.items()}
    for item in clear or []:
        field = fields.get(item.strip().lstrip("-").replace("_", "-"))
        if field is None:
            _fail(f"--clear: {item!r} is not a limit; one of {', '.join(fields)}", 2)
            return
        if field in changes:
            _fail(f"--clear {item} and --{_OPTION_OF[field]} contradict each other", 2)
            return
        changes[field] = None
    if not changes:
        _fail("nothing to change: give a limit option or --clear", 2)
    try:
        record = _with_keyring(ctx, lambda ring: ring.update(name, changes))
    except PolicyError as exc:
        _policy_error(exc)
        return
    if record is None:
        _fail(f"no active key named {name!r}")
    typer.echo(f"updated key {name!r}: {_policy_text(record.policy)}")


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, name: str) -> None:
    """Revoke a key; its very next request is refused, its queued and running jobs are
    cancelled and its pending webhooks dropped, no restart needed."""
    from ccgate.jobs.revocation import end_work_of

    async def revoke(ring: Any) -> int | None:
        if not await ring.revoke(name):
            return None
        record = await ring.store.keys.by_name(name)
        return await end_work_of(ring.store, [record.id])

    cancelled = _with_keyring(ctx, revoke)
    if cancelled is None:
        _fail(f"no active key named {name!r}")
    typer.echo(f"revoked key {name!r}" + (f"; cancelled {cancelled} job(s)" if cancelled else ""))


def _short(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


@app.command()
def doctor(
    ctx: typer.Context,
    probe: Annotated[
        bool, typer.Option(help="Also make one tiny real call through the CLI.")
    ] = False,
) -> None:
    """Check the configuration, the store and the claude CLI; exit 1 if anything is wrong."""
    from ccgate.doctor import run_doctor

    ok = _run(lambda: run_doctor(_settings(ctx), probe=probe, echo=typer.echo))
    if not ok:
        raise typer.Exit(1)


@app.command("run")
def run_prompt(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="The prompt; '-' reads it from stdin.")],
    model: Annotated[str | None, typer.Option(help="Model name or alias.")] = None,
    system_prompt: Annotated[str | None, typer.Option(help="Replace the system prompt.")] = None,
) -> None:
    """Run one prompt through the same runner the server uses (``CCGATE_BACKEND``), without
    a server."""
    from ccgate.models import ModelNotAllowed, model_policy
    from ccgate.runners.backend import backend_spec, build_backend
    from ccgate.runners.base import RunError, RunRequest, RunResult, TextDelta

    settings = _settings(ctx)
    text = sys.stdin.read() if prompt == "-" else prompt
    try:
        chosen = model_policy(
            settings.allowed_models,
            settings.default_model,
            settings.model_aliases,
            full_ids=backend_spec(settings).capabilities.full_model_ids,
        ).resolve(model)
    except ModelNotAllowed as exc:
        _fail(str(exc), 2)
        return
    try:
        backend = build_backend(settings, cli_path=settings.resolve_claude())
    except ConfigError as exc:
        _fail(str(exc), 2)
        return
    runner = backend.runner
    request = RunRequest.from_text(
        text,
        chosen,
        system_prompt=system_prompt,
        timeout_secs=settings.job_timeout_secs,
        idle_timeout_secs=settings.idle_timeout_secs,
    )

    async def go() -> None:
        streamed = False
        try:
            async for event in runner.run(request):
                if isinstance(event, TextDelta):
                    streamed = True
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                elif isinstance(event, RunResult) and not streamed:
                    sys.stdout.write(event.text)
            sys.stdout.write("\n")
        finally:
            await backend.aclose()

    try:
        _run(go)
    except RunError as exc:
        _fail(f"{exc.error_type}: {exc.message}")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="ccgate")


if __name__ == "__main__":
    main()
