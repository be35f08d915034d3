"""security hardening: parsed JSON answers, device secrets and per-device webhook secrets

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Jobs: a JSON job's answer, read once when it ends (canonical JSON, or why none parsed).
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("result_json", sa.Text(), nullable=True))
        batch.add_column(sa.Column("result_parse_error", sa.Text(), nullable=True))
    # Devices: the hash of the secret a device must show to bootstrap again as itself
    # (NULL for devices enrolled before it existed; they get one at their next refresh).
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("secret_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("result_parse_error")
        batch.drop_column("result_json")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("secret_hash")
