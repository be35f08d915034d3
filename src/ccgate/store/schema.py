"""The one schema ccgate keeps, for SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData()


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware in UTC, on SQLite too."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("last_used_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    # Needed in clear to sign webhooks, so it is kept, unlike the key's own secret.
    sa.Column("webhook_secret", sa.String(100), nullable=True),
    # The secret a rotation replaced: it keeps signing next to the new one until then.
    sa.Column("previous_webhook_secret", sa.String(100), nullable=True),
    sa.Column("previous_webhook_secret_until", UTCDateTime(), nullable=True),
    # Policy: NULL means no limit of that kind.
    sa.Column("rpm", sa.Integer(), nullable=True),
    sa.Column("rpd", sa.Integer(), nullable=True),
    sa.Column("tokens_per_day", sa.Integer(), nullable=True),
    sa.Column("budget_usd_per_month", sa.Float(), nullable=True),
    sa.Column("concurrency", sa.Integer(), nullable=True),
    sa.Column("models", sa.JSON(), nullable=True),
    sa.Column("ip_cidrs", sa.JSON(), nullable=True),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    # "app" for keys an admin made; "device" for keys minted by device enrollment.
    sa.Column("kind", sa.String(20), nullable=False, server_default="app"),
    # The most of each plan window this key may use, as a fraction (0 < x <= 1).
    sa.Column("window_share", sa.Float(), nullable=True),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("key_id", sa.String(40), sa.ForeignKey("api_keys.id"), nullable=True),
    sa.Column("door", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("request", sa.JSON(), nullable=False),
    sa.Column("metadata", sa.JSON(), nullable=True),
    sa.Column("result", sa.Text(), nullable=True),
    sa.Column("error_type", sa.String(64), nullable=True),
    sa.Column("error_message", sa.Text(), nullable=True),
    sa.Column("usage", sa.JSON(), nullable=True),
    sa.Column("cost_usd", sa.Float(), nullable=True),
    sa.Column("session_id", sa.String(100), nullable=True),
    sa.Column("stop_reason", sa.String(40), nullable=True),
    # Seconds the upstream asked to wait before retrying (a rate-limited run).
    sa.Column("retry_after", sa.Float(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("duration_ms", sa.Integer(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
    sa.Column("callback_url", sa.Text(), nullable=True),
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("request_hash", sa.String(64), nullable=True),
    # A JSON job's answer, read once when the job ends: the value as canonical JSON text, or
    # why the answer held none. Both NULL: not a JSON job, or one stored before these existed.
    sa.Column("result_json", sa.Text(), nullable=True),
    sa.Column("result_parse_error", sa.Text(), nullable=True),
    # A queued job is not claimed before this (a plan window closed until its reset);
    # window_retries counts runs put back because a window closed while they ran.
    sa.Column("retry_at", UTCDateTime(), nullable=True),
    sa.Column("window_retries", sa.Integer(), nullable=False, server_default="0"),
    sa.Index("ix_jobs_status_created", "status", "created_at"),
    sa.Index("ix_jobs_key_created", "key_id", "created_at"),
    sa.Index("ix_jobs_finished", "finished_at"),
    sa.Index("ix_jobs_key_started", "key_id", "started_at"),
    sa.Index("ux_jobs_key_idempotency", "key_id", "idempotency_key", unique=True),
)

job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column(
        "job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("type", sa.String(20), nullable=False),
    sa.Column("data", sa.JSON(), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("delivered_at", UTCDateTime(), nullable=True),
    sa.Column("last_status_code", sa.Integer(), nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("history", sa.JSON(), nullable=False),
    # The current round of attempts (a redelivery starts a new one), for the retry limits.
    sa.Column("round_attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("round_started_at", UTCDateTime(), nullable=True),
    sa.Column("redeliveries", sa.Integer(), nullable=False, server_default="0"),
    sa.Index("ix_webhook_due", "status", "next_attempt_at"),
    sa.Index("ix_webhook_job", "job_id"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("request_id", sa.String(40), nullable=False),
    sa.Column("key_name", sa.String(100), nullable=True),
    sa.Column("door", sa.String(20), nullable=False),
    sa.Column("route", sa.String(200), nullable=False),
    sa.Column("client_ip", sa.String(64), nullable=True),
    sa.Column("job_id", sa.String(40), nullable=True),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("http_status", sa.Integer(), nullable=False),
    sa.Column("job_status", sa.String(20), nullable=True),
    sa.Column("duration_ms", sa.Integer(), nullable=False),
    sa.Column("prompt_bytes", sa.Integer(), nullable=True),
    sa.Column("response_bytes", sa.Integer(), nullable=True),
    sa.Column("input_tokens", sa.Integer(), nullable=True),
    sa.Column("output_tokens", sa.Integer(), nullable=True),
    sa.Column("cost_usd", sa.Float(), nullable=True),
    sa.Column("error_type", sa.String(64), nullable=True),
    sa.Column("prompt_text", sa.Text(), nullable=True),
    # Newest-first pages (admin audit view): one index per filter, each ending in (at, id),
    # so keyset paging reads only the rows it returns, whatever the table's size.
    sa.Index("ix_audit_at", "at", "id"),
    sa.Index("ix_audit_key_at", "key_name", "at", "id"),
    sa.Index("ix_audit_status_at", "http_status", "at", "id"),
    sa.Index("ix_audit_job_status_at", "job_status", "at", "id"),
    sa.Index("ix_audit_door_at", "door", "at", "id"),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("key_id", sa.String(40), sa.ForeignKey("api_keys.id"), nullable=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("system_prompt", sa.Text(), nullable=True),
    # The conversation so far, as Anthropic Messages (role + content blocks).
    sa.Column("messages", sa.JSON(), nullable=False),
    sa.Column("turns", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Index("ix_sessions_expires", "expires_at"),
)

files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("key_id", sa.String(40), sa.ForeignKey("api_keys.id"), nullable=True),
    sa.Column("filename", sa.String(255), nullable=True),
    sa.Column("media_type", sa.String(100), nullable=False),
    sa.Column("size", sa.Integer(), nullable=False),
    sa.Column("content", sa.LargeBinary(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Index("ix_files_expires", "expires_at"),
)

enrollments = sa.Table(
    "enrollments",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("code_hash", sa.String(64), nullable=False, unique=True),
    # The key policy every enrolled device gets (the same fields as api_keys).
    sa.Column("policy", sa.JSON(), nullable=False),
    sa.Column("max_devices", sa.Integer(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("enrollment_id", sa.String(40), sa.ForeignKey("enrollments.id"), nullable=False),
    sa.Column("device_id", sa.String(200), nullable=False),
    # The key the device acts as: limits, audit and usage work as for any key.
    sa.Column("key_id", sa.String(40), sa.ForeignKey("api_keys.id"), nullable=False),
    # SHA-256 of the secret the device must show to bootstrap again as itself; NULL only for
    # devices enrolled before device secrets existed (they get one at their next refresh).
    sa.Column("secret_hash", sa.String(64), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("last_refresh_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Index("ux_devices_enrollment_device", "enrollment_id", "device_id", unique=True),
)

# The subscription's plan windows as the CLI last reported them (shared by every node).
plan_windows = sa.Table(
    "plan_windows",
    metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("utilization", sa.Float(), nullable=True),
    sa.Column("resets_at", UTCDateTime(), nullable=True),
    sa.Column("seen_at", UTCDateTime(), nullable=False),
)

# How much of each window each key's runs used (utilization deltas), until the window resets.
plan_window_usage = sa.Table(
    "plan_window_usage",
    metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("key_id", sa.String(40), primary_key=True),
    sa.Column("resets_at", UTCDateTime(), nullable=True),
    sa.Column("used", sa.Float(), nullable=False),
)

# Message Batches: one row per batch; counts are read from its requests (one source of truth).
batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("key_id", sa.String(40), sa.ForeignKey("api_keys.id"), nullable=False),
    # in_progress, canceling or ended.
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("ended_at", UTCDateTime(), nullable=True),
    sa.Column("cancel_initiated_at", UTCDateTime(), nullable=True),
    # Set by a delete: the batch is gone for its key while its requests are purged in chunks.
    sa.Column("deleted_at", UTCDateTime(), nullable=True),
    sa.Index("ix_batches_key_created", "key_id", "created_at", "id"),
    sa.Index("ix_batches_status", "status", "expires_at"),
    sa.Index("ix_batches_created", "created_at"),
)

# One request of a batch: its params until it is fed to the queue as a job, then its result.
batch_requests = sa.Table(
    "batch_requests",
    metadata,
    sa.Column("batch_id", sa.String(40), sa.ForeignKey("batches.id"), primary_key=True),
    # The request's position in the batch: feeding order and the key of result pages.
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("custom_id", sa.String(64), nullable=False),
    sa.Column("params", sa.JSON(), nullable=False),
    # pending, queued (fed: job_id names its job), succeeded, errored, canceled or expired.
    sa.Column("state", sa.String(12), nullable=False),
    sa.Column("job_id", sa.String(40), nullable=True),
    # The result object in the SDK's shape (succeeded and errored only).
    sa.Column("result", sa.JSON(), nullable=True),
    # A request its key's rate limit refused is not fed again before this.
    sa.Column("not_before", UTCDateTime(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Index("ux_batch_requests_custom_id", "batch_id", "custom_id", unique=True),
    sa.Index("ix_batch_requests_state", "batch_id", "state", "seq"),
    sa.Index("ix_batch_requests_job", "job_id"),
)

# Stored OpenAI Responses (``store: true``): what GET answers and what previous_response_id
# continues. Each row keeps its whole conversation, so branching from any response works.
responses = sa.Table(
    "responses",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("key_id", sa.String(40), sa.ForeignKey("api_keys.id"), nullable=True),
    # The rendered Response object, as GET returns it.
    sa.Column("response", sa.JSON(), nullable=False),
    # The conversation through this response's answer, as Anthropic Messages.
    sa.Column("messages", sa.JSON(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Index("ix_responses_expires", "expires_at"),
)

# SQLite only: how many jobs are queued, in one row that triggers on ``jobs`` (migration 0008)
# keep in the very transaction of every insert, status change and delete, whichever process
# writes. The capacity check on each submit reads it instead of counting the queue. A later
# migration that rebuilds ``jobs`` (SQLite's batch mode copies the table) must create the
# triggers again. PostgreSQL counts instead: one row every node's insert updated would make
# the nodes' submits wait for each other.
job_queue_depth = sa.Table(
    "job_queue_depth",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("queued", sa.Integer(), nullable=False),
    sa.CheckConstraint("id = 1", name="ck_job_queue_depth_one_row"),
    info={"dialects": ("sqlite",)},
)


def on_dialect(table: sa.Table, dialect: str) -> bool:
    """True when ``table`` exists on databases of ``dialect`` (most tables: on every one)."""
    dialects: tuple[str, ...] | None = table.info.get("dialects")
    return dialects is None or dialect in dialects
