"""Every ccgate setting, read once from ``CCGATE_*`` variables (and an optional env file).

This is the only module that reads ``os.environ``. A bad value stops start-up with a
``ConfigError`` that names the key, the value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_FILE_KEY = "CCGATE_ENV_FILE"

# Variables that pass from ccgate's own environment to the claude CLI; everything else is
# dropped so app secrets, cloud credentials and shell state never reach the subprocess.
CLI_ENV_ALLOWLIST: tuple[str, ...] = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "CLAUDE_CONFIG_DIR",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
    "CLAUDE_CODE_SUBAGENT_MODEL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)


class ConfigError(ValueError):
    """A setting has a value ccgate cannot use; the message names key, value and what is allowed."""

    def __init__(self, key: str, value: str, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        shown = "<hidden>" if _is_secret(key) else repr(value)
        super().__init__(f"{key}={shown} is not valid: expected {allowed}")


@dataclass(frozen=True)
class Setting:
    """One documented setting: its variable, default (as text) and the parser that checks it."""

    key: str
    default: str
    allowed: str
    parse: Callable[[str], Any]
    help: str


def _is_secret(key: str) -> bool:
    return key.endswith(("_TOKEN", "_SECRET", "_KEY"))


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if value < low or (high is not None and value > high):
            raise ValueError
        return value

    return parse


def _float(low: float, high: float | None = None) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw.strip())
        if value != value or value < low or (high is not None and value > high):
            raise ValueError
        return value

    return parse


def _off_or_float(low: float, high: float) -> Callable[[str], float]:
    within = _float(low, high)

    def parse(raw: str) -> float:
        return 0.0 if float(raw.strip()) == 0 else within(raw)

    return parse


def _bool(raw: str) -> bool:
    text = raw.strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError


def _text(raw: str) -> str:
    return raw.strip()


def _optional_text(raw: str) -> str | None:
    return raw.strip() or None


def _secret(min_length: int) -> Callable[[str], str | None]:
    def parse(raw: str) -> str | None:
        value = raw.strip()
        if value and len(value) < min_length:
            raise ValueError
        return value or None

    return parse


def _names(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


# The backends ``runners/backend.py`` registers (config imports no runner; a test keeps the
# two lists equal).
BACKEND_NAMES = ("cli", "api")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError
        return value

    return parse


def _database_url(raw: str) -> str:
    value = raw.strip()
    if not value.startswith(("sqlite", "postgresql", "postgres://")):
        raise ValueError
    return value


def _aliases(raw: str) -> dict[str, str]:
    aliases: dict[str, str] = {}
    for part in _names(raw):
        name, sep, target = part.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ValueError
        aliases[name.strip()] = target.strip()
    return aliases


def _cidrs(raw: str) -> tuple[str, ...]:
    networks = _names(raw)
    for network in networks:
        ipaddress.ip_network(network, strict=False)
    return tuple(str(ipaddress.ip_network(n, strict=False)) for n in networks)


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError
    return value


def _optional_url(raw: str) -> str | None:
    return _url(raw) if raw.strip() else None


def _optional_dir(raw: str) -> str | None:
    value = raw.strip()
    if value and not Path(value).is_dir():
        raise ValueError
    return value or None


def _env_names(raw: str) -> tuple[str, ...]:
    names = _names(raw)
    for name in names:
        if not name.replace("_", "").isalnum():
            raise ValueError
    return names


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "CCGATE_HOST",
        "127.0.0.1",
        "an address to bind",
        _text,
        "Address the HTTP server binds. Keep loopback unless a proxy or firewall fronts it.",
    ),
    Setting(
        "CCGATE_PORT",
        "8787",
        "an integer between 1 and 65535",
        _int(1, 65535),
        "TCP port of the HTTP server.",
    ),
    Setting(
        "CCGATE_WORKERS",
        "1",
        "an integer between 1 and 64",
        _int(1, 64),
        "Server processes sharing the port (`ccgate serve --workers`). More than 1 needs "
        "PostgreSQL and `CCGATE_REDIS_URL` (docs/deploy.md#several-workers).",
    ),
    Setting(
        "CCGATE_DATABASE_URL",
        "sqlite:///./ccgate.db",
        "a sqlite:/// or postgresql:// URL",
        _database_url,
        "Where jobs, keys and audit rows live. SQLite (embedded, WAL) by default; "
        "`postgresql://user@host/db` needs the `[postgres]` extra.",
    ),
    Setting(
        "CCGATE_CLAUDE_PATH",
        "",
        "a path to the claude executable, or empty",
        _optional_text,
        "The `claude` CLI to run. Empty: looked up on `PATH`.",
    ),
    Setting(
        "CCGATE_DEFAULT_MODEL",
        "sonnet",
        "a model name",
        _text,
        "Model used when a request names none.",
    ),
    Setting(
        "CCGATE_ALLOWED_MODELS",
        "haiku,sonnet,opus,claude-*",
        "comma-separated names; `*` matches any run of characters",
        _names,
        "Models a request may ask for; anything else is a 400 that lists these.",
    ),
    Setting(
        "CCGATE_CONCURRENCY",
        "2",
        "an integer between 1 and 256",
        _int(1, 256),
        "How many CLI processes run at once; further jobs wait in the queue.",
    ),
    Setting(
        "CCGATE_QUEUE_SIZE",
        "100",
        "an integer of at least 1",
        _int(1),
        "How many jobs may wait; past that, submits get 503 with Retry-After.",
    ),
    Setting(
        "CCGATE_JOB_TIMEOUT_SECS",
        "600",
        "a number of seconds between 1 and 86400",
        _float(1, 86400),
        "Wall-clock limit of one run, and the ceiling for a request's `timeout_secs`.",
    ),
    Setting(
        "CCGATE_IDLE_TIMEOUT_SECS",
        "120",
        "0 (off) or a number of seconds between 1 and 86400",
        _off_or_float(1, 86400),
        "A run that prints nothing for this long is stopped as a timeout.",
    ),
    Setting(
        "CCGATE_MAX_BODY_BYTES",
        "16777216",
        "an integer of at least 1024",
        _int(1024),
        "Largest request body accepted; larger bodies get 413.",
    ),
    Setting(
        "CCGATE_MAX_PROMPT_BYTES",
        "4194304",
        "an integer of at least 1",
        _int(1),
        "Largest prompt (UTF-8 bytes, system prompts included); larger get 413.",
    ),
    Setting(
        "CCGATE_ALLOW_TOOLS",
        "false",
        "true or false",
        _bool,
        "DANGER: let the model use Claude Code's built-in tools (shell, files, web) on "
        "this machine. Off by default: every run gets an empty tool list.",
    ),
    Setting(
        "CCGATE_ADMIN_TOKEN",
        "",
        "a secret of at least 32 characters, or empty",
        _secret(32),
        "Token for the admin API (`/admin/*`, docs/admin.md), at least 32 characters "
        "(`openssl rand -hex 32`). Empty: the admin API is off and answers 404 saying so.",
    ),
    Setting(
        "CCGATE_UPSTREAM_RETRIES",
        "1",
        "an integer between 0 and 10",
        _int(0, 10),
        "Retries the CLI makes on upstream errors (`CLAUDE_CODE_MAX_RETRIES`). The CLI's "
        "own default retries for minutes; keep this small.",
    ),
    Setting(
        "CCGATE_UPSTREAM_TIMEOUT_SECS",
        "300",
        "a number of seconds between 1 and 3600",
        _float(1, 3600),
        "Per-request upstream timeout the CLI applies (`API_TIMEOUT_MS`).",
    ),
    Setting(
        "CCGATE_KILL_GRACE_SECS",
        "2",
        "a number of seconds between 0 and 60",
        _float(0, 60),
        "On cancel or timeout: time between SIGTERM and SIGKILL to the run's process group.",
    ),
    Setting(
        "CCGATE_MAX_ATTEMPTS",
        "2",
        "an integer between 1 and 10",
        _int(1, 10),
        "How often a job interrupted by a crashed node is started before it fails.",
    ),
    Setting(
        "CCGATE_SHUTDOWN_GRACE_SECS",
        "30",
        "a number of seconds between 0 and 3600",
        _float(0, 3600),
        "On SIGTERM/SIGINT: how long running jobs may finish before they are stopped and "
        "put back in the queue.",
    ),
    Setting(
        "CCGATE_LEASE_SECS",
        "30",
        "a number of seconds between 5 and 3600",
        _float(5, 3600),
        "A running job's lease; a node that stops renewing it is presumed dead.",
    ),
    Setting(
        "CCGATE_JOB_TTL_HOURS",
        "168",
        "a number of hours (0 keeps jobs forever)",
        _float(0),
        "Finished jobs older than this are deleted with their events and deliveries.",
    ),
    Setting(
        "CCGATE_CLEANUP_INTERVAL_SECS",
        "300",
        "a number of seconds between 1 and 86400",
        _float(1, 86400),
        "How often expired jobs, sessions and files are looked for.",
    ),
    Setting(
        "CCGATE_SSE_HEARTBEAT_SECS",
        "15",
        "a number of seconds between 1 and 300",
        _float(1, 300),
        "Interval of the comment heartbeat on idle SSE streams.",
    ),
    Setting(
        "CCGATE_WEBHOOK_SECRET",
        "",
        "a secret string, or empty",
        _optional_text,
        "Signs webhooks of app keys made before keys had a webhook secret of their own; "
        "never a device's (docs/webhooks.md).",
    ),
    Setting(
        "CCGATE_WEBHOOK_TIMEOUT_SECS",
        "10",
        "a number of seconds between 1 and 120",
        _float(1, 120),
        "Time a webhook receiver has to answer one delivery attempt.",
    ),
    Setting(
        "CCGATE_WEBHOOK_MAX_ATTEMPTS",
        "8",
        "an integer between 1 and 50",
        _int(1, 50),
        "Delivery attempts before a webhook is given up as failed.",
    ),
    Setting(
        "CCGATE_WEBHOOK_RETRY_SPAN_SECS",
        "3600",
        "a number of seconds between 1 and 604800",
        _float(1, 604800),
        "No retry is scheduled later than this after the first attempt.",
    ),
    Setting(
        "CCGATE_WEBHOOK_ROTATION_GRACE_SECS",
        "86400",
        "a number of seconds between 0 and 2592000",
        _float(0, 2592000),
        "After a key's webhook secret is rotated, the old secret keeps signing next to the "
        "new one this long (0: it stops at once).",
    ),
    Setting(
        "CCGATE_WEBHOOK_LEGACY_HEADERS",
        "true",
        "true or false",
        _bool,
        "Also send the X-Ccgate-Event-Id, X-Ccgate-Timestamp and X-Ccgate-Signature "
        "headers next to the Standard Webhooks ones (docs/webhooks.md).",
    ),
    Setting(
        "CCGATE_WEBHOOK_MAX_REDELIVERIES",
        "10",
        "an integer between 0 and 1000",
        _int(0, 1000),
        "How often a job's owner may ask for its webhook again "
        "(POST /api/v1/jobs/{id}/webhook/redeliver); 0 turns redelivery off.",
    ),
    Setting(
        "CCGATE_OUTBOUND_ALLOW",
        "",
        "comma-separated hosts, IPs or CIDRs",
        _names,
        "Private or loopback destinations webhooks (and fetch) may reach anyway, for LAN "
        "receivers. Empty: only public addresses.",
    ),
    Setting(
        "CCGATE_WORK_DIR",
        "",
        "a directory path, or empty",
        _optional_text,
        "Parent of the throwaway per-run directories. Empty: the system temp directory.",
    ),
    Setting(
        "CCGATE_POOL_MODE",
        "off",
        "off, fresh or reuse",
        _choice("off", "fresh", "reuse"),
        "Warm pool of pre-started CLI processes (docs/pool.md). `fresh`: one request per "
        "process; `reuse`: reset with /clear and reused. `off`: every run starts cold.",
    ),
    Setting(
        "CCGATE_POOL_MAX_PROCESSES",
        "4",
        "an integer between 1 and 256",
        _int(1, 256),
        "Most pooled CLI processes alive at once, idle and busy (~200 MiB RSS each).",
    ),
    Setting(
        "CCGATE_POOL_MIN_IDLE",
        "1",
        "an integer between 1 and 16",
        _int(1, 16),
        "Idle processes kept ready per recently active (key, model, system prompt).",
    ),
    Setting(
        "CCGATE_POOL_IDLE_SECS",
        "300",
        "a number of seconds between 1 and 86400",
        _float(1, 86400),
        "An idle pooled process older than this is stopped, and its owner no longer warmed.",
    ),
    Setting(
        "CCGATE_POOL_MAX_REQUESTS",
        "50",
        "an integer between 1 and 10000",
        _int(1, 10000),
        "In `reuse` mode: requests one process serves before it is retired.",
    ),
    Setting(
        "CCGATE_SANDBOX",
        "off",
        "off or bwrap",
        _choice("off", "bwrap"),
        "Confine every CLI process with bubblewrap (`bwrap`): it then sees only its run "
        "directory, its own config directory and what it needs to start (docs/security.md). "
        "`off`: no sandbox.",
    ),
    Setting(
        "CCGATE_BACKEND",
        "cli",
        " or ".join(BACKEND_NAMES),
        _choice(*BACKEND_NAMES),
        "What answers requests: `cli` runs the logged-in `claude` CLI; `api` calls the "
        "Anthropic API with the operator's `ANTHROPIC_API_KEY` (docs/backends.md).",
    ),
    Setting(
        "ANTHROPIC_API_KEY",
        "",
        "an Anthropic API key, or empty",
        _optional_text,
        "The operator's own API key. Used by `CCGATE_BACKEND=api`; also passed to the CLI, "
        "which then bills it instead of the logged-in account. Never sent to clients.",
    ),
    Setting(
        "ANTHROPIC_BASE_URL",
        "https://api.anthropic.com",
        "an http(s) URL",
        _url,
        "Upstream of the API backend (and of the CLI when set in the environment).",
    ),
    Setting(
        "CCGATE_API_MAX_CONNECTIONS",
        "100",
        "an integer between 1 and 10000",
        _int(1, 10000),
        "Keep-alive connection pool size of the API backend.",
    ),
    Setting(
        "CCGATE_CIRCUIT_FAILURES",
        "5",
        "an integer between 1 and 1000",
        _int(1, 1000),
        "API backend: consecutive upstream failures (5xx, 529, connect errors, timeouts) "
        "that open the circuit breaker.",
    ),
    Setting(
        "CCGATE_CIRCUIT_COOLDOWN_SECS",
        "30",
        "a number of seconds between 0.1 and 3600",
        _float(0.1, 3600),
        "How long an open circuit answers 503 at once before one probe is let through.",
    ),
    Setting(
        "CCGATE_MODEL_ALIASES",
        "",
        "comma-separated name=model pairs",
        _aliases,
        "Extra model names, e.g. `latest=claude-sonnet-4-5,fast=haiku`; they override "
        "the built-in `haiku`, `sonnet` and `opus` (docs/api-compat.md).",
    ),
    Setting(
        "CCGATE_SESSION_TTL_HOURS",
        "168",
        "a number of hours between 0.01 and 87600",
        _float(0.01, 87600),
        "A session not continued for this long is deleted; so is a stored Responses API "
        "response this long after it was answered.",
    ),
    Setting(
        "CCGATE_BATCH_INFLIGHT",
        "2",
        "an integer between 1 and 1000",
        _int(1, 1000),
        "How many requests of one Message Batch may be queued or running at once; the rest "
        "wait in the batch, not in the queue (docs/batches.md).",
    ),
    Setting(
        "CCGATE_BATCH_EXPIRY_HOURS",
        "24",
        "a number of hours between 0.01 and 720",
        _float(0.01, 720),
        "A Message Batch still running this long after its creation ends: its unfinished "
        "requests end `expired`.",
    ),
    Setting(
        "CCGATE_BATCH_TTL_DAYS",
        "29",
        "a number of days between 0.01 and 3650",
        _float(0.01, 3650),
        "An ended Message Batch is deleted with its results this long after its creation.",
    ),
    Setting(
        "CCGATE_BATCH_MAX_REQUESTS",
        "100000",
        "an integer between 1 and 100000",
        _int(1, 100000),
        "Most requests one Message Batch may hold.",
    ),
    Setting(
        "CCGATE_REDIS_URL",
        "",
        "a redis:// URL, or empty",
        _optional_text,
        "Shared storage for rate limits across ccgate nodes. Empty: limits are kept in "
        "memory, per process.",
    ),
    Setting(
        "CCGATE_GLOBAL_RPD",
        "0",
        "an integer (0 turns it off)",
        _int(0),
        "Requests per day across all keys; past it every key gets 429.",
    ),
    Setting(
        "CCGATE_RPM_WINDOW_SECS",
        "60",
        "an integer of seconds between 1 and 86400",
        _int(1, 86400),
        "Length of the rpm (and fetch rpm) window; change only for testing.",
    ),
    Setting(
        "CCGATE_RPD_WINDOW_SECS",
        "86400",
        "an integer of seconds between 1 and 2678400",
        _int(1, 2678400),
        "Length of the rpd window; change only for testing.",
    ),
    Setting(
        "CCGATE_ALLOW_CIDRS",
        "",
        "comma-separated IPs or CIDRs, or empty",
        _cidrs,
        "Client addresses allowed at all (loopback always is). Empty: any address.",
    ),
    Setting(
        "CCGATE_TRUSTED_PROXIES",
        "",
        "comma-separated IPs or CIDRs, or empty",
        _cidrs,
        "Peers whose X-Forwarded-For is believed (the right-most untrusted hop is the "
        "client). Empty: the socket address is the client. The only setting that makes "
        "ccgate read X-Forwarded-For (uvicorn's FORWARDED_ALLOW_IPS is ignored).",
    ),
    Setting(
        "CCGATE_CORS_ORIGINS",
        "",
        "comma-separated origins, `*`, or empty",
        _names,
        "Browser origins allowed to call ccgate. `*` allows any origin without "
        "credentials. Empty: no CORS headers.",
    ),
    Setting(
        "CCGATE_FILES_MAX_BYTES",
        "10485760",
        "an integer between 1 and 104857600",
        _int(1, 104857600),
        "Largest file `POST /api/v1/files` accepts.",
    ),
    Setting(
        "CCGATE_FETCH_ENABLED",
        "false",
        "true or false",
        _bool,
        "Turn on `POST /v1/fetch`, the guarded page fetcher.",
    ),
    Setting(
        "CCGATE_FETCH_RPM",
        "30",
        "an integer between 1 and 100000",
        _int(1, 100000),
        "Page fetches per minute per key (a bucket of its own, apart from model limits).",
    ),
    Setting(
        "CCGATE_ENROLLMENT_SECRET",
        "",
        "a secret of at least 32 characters, or empty",
        _secret(32),
        "Signs device tokens (HS256). Empty: device enrollment is off.",
    ),
    Setting(
        "CCGATE_DEVICE_TOKEN_TTL_SECS",
        "3600",
        "a number of seconds between 60 and 604800",
        _int(60, 604800),
        "Lifetime of a device token; `POST /v1/refresh` renews it.",
    ),
    Setting(
        "CCGATE_CLI_ENV_PASSTHROUGH",
        "",
        "comma-separated variable names",
        _env_names,
        "Extra variables passed from ccgate's environment to the CLI, beyond the built-in "
        "allowlist.",
    ),
    Setting(
        "CCGATE_AUDIT_PROMPTS",
        "false",
        "true or false",
        _bool,
        "Store prompt text in audit rows. Off: audit rows hold sizes, never text.",
    ),
    Setting(
        "CCGATE_LOG_LEVEL",
        "info",
        "debug, info, warning or error",
        _choice("debug", "info", "warning", "error"),
        "Log verbosity (lines on stderr).",
    ),
    Setting(
        "CCGATE_LOG_FORMAT",
        "auto",
        "auto, json or console",
        _choice("auto", "json", "console"),
        "Log line format on stderr. `auto`: readable coloured lines when stderr is a "
        "terminal, JSON lines otherwise (a pipe, a file, journald, a container).",
    ),
    Setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "",
        "an http(s) URL, or empty",
        _optional_url,
        "OpenTelemetry collector (OTLP/HTTP) that receives ccgate's spans at "
        "`<url>/v1/traces`; needs the `[otel]` extra. Empty: no tracing.",
    ),
    Setting(
        "CCGATE_METRICS_ALLOW_CIDRS",
        "",
        "comma-separated IPs or CIDRs, or empty",
        _cidrs,
        "Socket addresses that may read `GET /metrics` without a token (loopback always "
        "may). X-Forwarded-For never counts here (docs/metrics.md).",
    ),
    Setting(
        "CCGATE_METRICS_TOKEN",
        "",
        "a secret of at least 32 characters, or empty",
        _secret(32),
        "Bearer token that opens `GET /metrics` from any address. Empty: only loopback and "
        "CCGATE_METRICS_ALLOW_CIDRS.",
    ),
    Setting(
        "PROMETHEUS_MULTIPROC_DIR",
        "",
        "an existing directory, or empty",
        _optional_dir,
        "Several worker processes on one port: each keeps its metrics in files here and "
        "`/metrics` merges them. Must be set in the process environment (not only the env "
        "file), empty at start (docs/metrics.md).",
    ),
    Setting(
        ENV_FILE_KEY,
        "",
        "a path to a KEY=VALUE file, or empty",
        _optional_text,
        "Env file read at start; real environment variables win over it.",
    ),
)

SETTING_KEYS = frozenset(s.key for s in SETTINGS)


def _attr(key: str) -> str:
    """The Settings field of a variable: ``CCGATE_PORT`` is ``port``."""
    return key.removeprefix("CCGATE_").lower()


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one ccgate process."""

    host: str
    port: int
    workers: int
    database_url: str
    claude_path: str | None
    default_model: str
    allowed_models: tuple[str, ...]
    concurrency: int
    queue_size: int
    job_timeout_secs: float
    idle_timeout_secs: float
    max_body_bytes: int
    max_prompt_bytes: int
    allow_tools: bool
    admin_token: str | None
    upstream_retries: int
    upstream_timeout_secs: float
    kill_grace_secs: float
    max_attempts: int
    lease_secs: float
    shutdown_grace_secs: float
    job_ttl_hours: float
    cleanup_interval_secs: float
    sse_heartbeat_secs: float
    webhook_secret: str | None
    webhook_timeout_secs: float
    webhook_max_attempts: int
    webhook_retry_span_secs: float
    webhook_rotation_grace_secs: float
    webhook_legacy_headers: bool
    webhook_max_redeliveries: int
    outbound_allow: tuple[str, ...]
    work_dir: str | None
    cli_env_passthrough: tuple[str, ...]
    backend: str
    anthropic_api_key: str | None
    anthropic_base_url: str
    api_max_connections: int
    circuit_failures: int
    circuit_cooldown_secs: float
    model_aliases: dict[str, str]
    session_ttl_hours: float
    batch_inflight: int
    batch_expiry_hours: float
    batch_ttl_days: float
    batch_max_requests: int
    redis_url: str | None
    global_rpd: int
    rpm_window_secs: int
    rpd_window_secs: int
    allow_cidrs: tuple[str, ...]
    trusted_proxies: tuple[str, ...]
    cors_origins: tuple[str, ...]
    files_max_bytes: int
    fetch_enabled: bool
    fetch_rpm: int
    enrollment_secret: str | None
    device_token_ttl_secs: int
    pool_mode: str
    pool_max_processes: int
    pool_min_idle: int
    pool_idle_secs: float
    pool_max_requests: int
    sandbox: str
    audit_prompts: bool
    log_level: str
    metrics_allow_cidrs: tuple[str, ...]
    metrics_token: str | None
    prometheus_multiproc_dir: str | None
    log_format: str
    otel_exporter_otlp_endpoint: str | None
    env_file: str | None
    cli_base_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    unknown_keys: tuple[str, ...] = ()

    def resolve_claude(self) -> str | None:
        """Return the claude executable to run, or None when it cannot be found."""
        if self.claude_path:
            path = Path(self.claude_path).expanduser()
            return str(path) if path.is_file() and os.access(path, os.X_OK) else None
        return shutil.which("claude", path=self.cli_base_env.get("PATH"))


def read_env_file(path: str | Path) -> dict[str, str]:
    """Parse a ``KEY=VALUE`` file: ``#`` comments, blank lines, optional ``export`` and quotes."""
    values: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(ENV_FILE_KEY, str(path), f"a readable file ({exc.strerror})") from exc
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(ENV_FILE_KEY, str(path), f"KEY=VALUE lines (line {number} is not)")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | None = None
) -> Settings:
    """Read and validate every setting; raise ConfigError on the first bad value."""
    env = dict(os.environ if environ is None else environ)
    file_path = env_file or env.get(ENV_FILE_KEY) or None
    merged: dict[str, str] = {}
    if file_path:
        merged.update(read_env_file(file_path))
    merged.update(env)
    if file_path:
        merged[ENV_FILE_KEY] = file_path

    parsed: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = merged.get(setting.key, setting.default)
        try:
            parsed[setting.key] = setting.parse(raw)
        except (ValueError, TypeError):
            raise ConfigError(setting.key, raw, setting.allowed) from None

    passthrough = parsed["CCGATE_CLI_ENV_PASSTHROUGH"]
    cli_env = {
        name: merged[name]
        for name in (*CLI_ENV_ALLOWLIST, *passthrough)
        if name in merged and not name.startswith("CCGATE_")
    }
    if parsed["CCGATE_BACKEND"] == "api" and not parsed["ANTHROPIC_API_KEY"]:
        raise ConfigError(
            "ANTHROPIC_API_KEY", "", "an Anthropic API key, because CCGATE_BACKEND=api needs one"
        )
    if parsed["PROMETHEUS_MULTIPROC_DIR"] and "PROMETHEUS_MULTIPROC_DIR" not in env:
        # prometheus-client reads it from the process environment when it is imported.
        raise ConfigError(
            "PROMETHEUS_MULTIPROC_DIR",
            merged["PROMETHEUS_MULTIPROC_DIR"],
            "a variable of the process environment, not of the env file",
        )
    unknown = tuple(
        sorted(
            k
            for k in merged
            if k.startswith("CCGATE_")
            and k not in SETTING_KEYS
            and not k.startswith("CCGATE_TEST_")
        )
    )
    return Settings(
        **{_attr(key): value for key, value in parsed.items()},
        cli_base_env=cli_env,
        unknown_keys=unknown,
    )
