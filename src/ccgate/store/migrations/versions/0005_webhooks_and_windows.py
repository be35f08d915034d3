"""webhooks and subscription windows: Standard Webhooks secret rotation, redelivery rounds

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Keys: the webhook secret a rotation replaced, which keeps signing until the grace ends.
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("previous_webhook_secret", sa.String(length=100), nullable=True))
        batch.add_column(
            sa.Column("previous_webhook_secret_until", sa.DateTime(timezone=True), nullable=True)
        )
    # Deliveries: the current round of attempts (a redelivery starts a new one) and how
    # often the job's owner asked for the webhook again.
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(
            sa.Column("round_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("round_started_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("redeliveries", sa.Integer(), nullable=False, server_default="0")
        )
    # Deliveries mid-retry keep the attempts they already made within their limit.
    op.execute("UPDATE webhook_deliveries SET round_attempts = attempts")
    # Plan windows: a job held until a window resets, how often a run was retried after one
    # closed under it, and the most of a window one key may use.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("window_retries", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("window_share", sa.Float(), nullable=True))
    op.create_table(
        "plan_windows",
        sa.Column("name", sa.String(length=40), primary_key=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("utilization", sa.Float(), nullable=True),
        sa.Column("resets_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "plan_window_usage",
        sa.Column("name", sa.String(length=40), primary_key=True),
        sa.Column("key_id", sa.String(length=40), primary_key=True),
        sa.Column("resets_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("plan_window_usage")
    op.drop_table("plan_windows")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("window_share")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("window_retries")
        batch.drop_column("retry_at")
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_column("redeliveries")
        batch.drop_column("round_started_at")
        batch.drop_column("round_attempts")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("previous_webhook_secret_until")
        batch.drop_column("previous_webhook_secret")
