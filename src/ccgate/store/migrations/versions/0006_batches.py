"""Message Batches: batches and their requests

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column("key_id", sa.String(length=40), sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_initiated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_batches_key_created", "batches", ["key_id", "created_at", "id"])
    op.create_index("ix_batches_status", "batches", ["status", "expires_at"])
    op.create_index("ix_batches_created", "batches", ["created_at"])
    op.create_table(
        "batch_requests",
        sa.Column("batch_id", sa.String(length=40), sa.ForeignKey("batches.id"), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("custom_id", sa.String(length=64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ux_batch_requests_custom_id", "batch_requests", ["batch_id", "custom_id"], unique=True
    )
    op.create_index("ix_batch_requests_state", "batch_requests", ["batch_id", "state", "seq"])
    op.create_index("ix_batch_requests_job", "batch_requests", ["job_id"])


def downgrade() -> None:
    op.drop_table("batch_requests")
    op.drop_table("batches")
