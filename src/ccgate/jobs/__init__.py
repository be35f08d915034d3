"""Jobs: one model and one queue for every door."""

from ccgate.jobs.requests import request_from_json, request_to_json
from ccgate.jobs.service import JobService, NotAccepting, QueueFull, QueueLimits

__all__ = ["JobService", "NotAccepting", "QueueFull", "QueueLimits", "request_from_json",
           "request_to_json"]
