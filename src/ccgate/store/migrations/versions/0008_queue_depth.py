"""The queued count kept by triggers on SQLite

Revision ID: 0008
Revises: 0007

On SQLite every submit checked the queue's capacity by counting the queued jobs, work that
grew with the queue. ``job_queue_depth`` holds that count in one row, started from the jobs
already queued and kept by triggers on ``jobs`` in the transaction of every change, whichever
process makes it. PostgreSQL keeps counting: nothing changes there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_TRIGGERS = {
    "trg_jobs_queued_insert": (
        "CREATE TRIGGER trg_jobs_queued_insert AFTER INSERT ON jobs"
        " WHEN NEW.status = 'queued'"
        " BEGIN UPDATE job_queue_depth SET queued = queued + 1 WHERE id = 1; END"
    ),
    "trg_jobs_queued_update": (
        "CREATE TRIGGER trg_jobs_queued_update AFTER UPDATE OF status ON jobs"
        " WHEN (OLD.status = 'queued') <> (NEW.status = 'queued')"
        " BEGIN UPDATE job_queue_depth"
        " SET queued = queued + CASE WHEN NEW.status = 'queued' THEN 1 ELSE -1 END"
        " WHERE id = 1; END"
    ),
    "trg_jobs_queued_delete": (
        "CREATE TRIGGER trg_jobs_queued_delete AFTER DELETE ON jobs"
        " WHEN OLD.status = 'queued'"
        " BEGIN UPDATE job_queue_depth SET queued = queued - 1 WHERE id = 1; END"
    ),
}


def _sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def upgrade() -> None:
    if not _sqlite():
        return
    op.create_table(
        "job_queue_depth",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("queued", sa.Integer(), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_job_queue_depth_one_row"),
    )
    # The migration holds the write lock (BEGIN IMMEDIATE): no job changes between the count
    # and the triggers that keep it from then on.
    op.execute(
        "INSERT INTO job_queue_depth (id, queued)"
        " SELECT 1, count(*) FROM jobs WHERE status = 'queued'"
    )
    for create in _TRIGGERS.values():
        op.execute(create)


def downgrade() -> None:
    if not _sqlite():
        return
    for name in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("job_queue_depth")
