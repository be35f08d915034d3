"""The Message Batches door (``/v1/messages/batches``), one door in two modules: ``routes``
(the endpoints and the ``MessageBatch`` object) and ``hooks`` (what the batch engine calls:
each request's params checked, made a job, admitted under the key's limits, rendered as a
result)."""

from __future__ import annotations

from ccgate.api.doors.batches.hooks import batch_hooks
from ccgate.api.doors.batches.routes import router

__all__ = ["batch_hooks", "router"]
