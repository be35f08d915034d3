"""security hardening: parsed JSON answers, device secrets and per-device webhook secrets;
audit log indexes for keyset paging

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

_AUDIT_INDEXES = {
    "ix_audit_at": ["at", "id"],
    "ix_audit_key_at": ["key_name", "at", "id"],
    "ix_audit_status_at": ["http_status", "at", "id"],
    "ix_audit_job_status_at": ["job_status", "at", "id"],
    "ix_audit_door_at": ["door", "at", "id"],
}


def upgrade() -> None:
    # Jobs: a JSON job's answer, read once when it ends (canonical JSON, or why none parsed).
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("result_json", sa.Text(), nullable=True))
        batch.add_column(sa.Column("result_parse_error", sa.Text(), nullable=True))
    # Devices: the hash of the secret a device must show to bootstrap again as itself
    # (NULL for devices enrolled before it existed; they get one at their next refresh).
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("secret_hash", sa.String(length=64), nullable=True))
    # Audit log: an index per filter of the admin view, each ending in (at, id) for keyset
    # paging newest first.
    op.drop_index("ix_audit_at", table_name="audit_log")
    op.drop_index("ix_audit_key_at", table_name="audit_log")
    for name, columns in _AUDIT_INDEXES.items():
        op.create_index(name, "audit_log", columns)


def downgrade() -> None:
    for name in _AUDIT_INDEXES:
        op.drop_index(name, table_name="audit_log")
    op.create_index("ix_audit_at", "audit_log", ["at"])
    op.create_index("ix_audit_key_at", "audit_log", ["key_name", "at"])
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("result_parse_error")
        batch.drop_column("result_json")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("secret_hash")
