"""Jobs: one model and one queue for every door."""

from ccgate.jobs.requests import request_from_json, request_to_json
from ccgate.jobs.service import (
    IdempotencyConflict,
    JobService,
    NotAccepting,
    QueueFull,
    QueueLimits,
    Submission,
)

__all__ = [
    "IdempotencyConflict",
    "JobService",
    "NotAccepting",
    "QueueFull",
    "QueueLimits",
    "Submission",
    "request_from_json",
    "request_to_json",
]
