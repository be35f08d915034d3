"""The store: jobs, keys and audit rows in SQLite (default) or PostgreSQL."""

from __future__ import annotations

from ccgate.store.audit import AuditEntry, AuditTable
from ccgate.store.batches import BatchTable
from ccgate.store.engine import Database
from ccgate.store.enrollments import EnrollmentTable
from ccgate.store.events import EventTable, JobEvent
from ccgate.store.files import FileTable
from ccgate.store.jobs import JobRecord, JobStatus, JobTable
from ccgate.store.keys import KeyRecord, KeyTable
from ccgate.store.plan_windows import PlanWindowTable
from ccgate.store.responses import ResponseTable, StoredResponse
from ccgate.store.sessions import SessionRecord, SessionTable
from ccgate.store.usage import UsageTable
from ccgate.store.webhooks import DeliveryTable


class Store:
    """One database and the tables ccgate keeps in it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.jobs = JobTable(db)
        self.keys = KeyTable(db)
        self.audit = AuditTable(db)
        self.events = EventTable(db)
        self.webhooks = DeliveryTable(db)
        self.sessions = SessionTable(db)
        self.files = FileTable(db)
        self.usage = UsageTable(db)
        self.enrollments = EnrollmentTable(db)
        self.plan_windows = PlanWindowTable(db)
        self.batches = BatchTable(db)
        self.responses = ResponseTable(db)

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Connect to ``url`` and, by default, bring its schema up to date."""
        store = cls(Database(url))
        if migrate:
            try:
                await store.db.migrate()
            except BaseException:
                await store.close()
                raise
        return store

    async def close(self) -> None:
        """Close every connection."""
        await self.db.close()


__all__ = [
    "AuditEntry",
    "Database",
    "JobEvent",
    "JobRecord",
    "JobStatus",
    "KeyRecord",
    "SessionRecord",
    "Store",
    "StoredResponse",
]
