"""governance: key policy, sessions, files, enrollments and devices

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rpm", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("rpd", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("tokens_per_day", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("budget_usd_per_month", sa.Float(), nullable=True))
        batch.add_column(sa.Column("concurrency", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("models", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("ip_cidrs", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("kind", sa.String(length=20), server_default="app", nullable=False)
        )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("stop_reason", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("retry_after", sa.Float(), nullable=True))
    op.create_index("ix_audit_key_at", "audit_log", ["key_name", "at"])
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=True),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("turns", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_sessions_expires", "sessions", ["expires_at"])
    op.create_table(
        "files",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=True),
        sa.Column("filename", sa.String(length=255), nullable=True),
        sa.Column("media_type", sa.String(length=100), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_files_expires", "files", ["expires_at"])
    op.create_table(
        "enrollments",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("max_devices", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("code_hash"),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("enrollment_id", sa.String(length=40), nullable=False),
        sa.Column("device_id", sa.String(length=200), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_refresh_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["enrollment_id"], ["enrollments.id"]),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ux_devices_enrollment_device", "devices", ["enrollment_id", "device_id"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ux_devices_enrollment_device", table_name="devices")
    op.drop_table("devices")
    op.drop_table("enrollments")
    op.drop_index("ix_files_expires", table_name="files")
    op.drop_table("files")
    op.drop_index("ix_sessions_expires", table_name="sessions")
    op.drop_table("sessions")
    op.drop_index("ix_audit_key_at", table_name="audit_log")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retry_after")
        batch.drop_column("stop_reason")
    with op.batch_alter_table("api_keys") as batch:
        for column in (
            "kind",
            "expires_at",
            "ip_cidrs",
            "models",
            "concurrency",
            "budget_usd_per_month",
            "tokens_per_day",
            "rpd",
            "rpm",
        ):
            batch.drop_column(column)
