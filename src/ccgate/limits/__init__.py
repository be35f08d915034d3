"""Rate limits, quotas, budgets and concurrency per key, in memory or shared through Redis.

The doors call ``Limiter.admit`` after validating a request, with a ``RunEstimate`` of what it
may spend, and ``Admission.settle`` (or ``release``) when it ends; ``rate_headers`` turns the
admission's ``RateState`` into each door's headers.
"""

from __future__ import annotations

from ccgate.limits.estimate import RunEstimate, estimate_run
from ccgate.limits.headers import RateState, rate_headers
from ccgate.limits.limiter import Limiter, LimitExceeded
from ccgate.limits.spend import Admission

__all__ = [
    "Admission",
    "LimitExceeded",
    "Limiter",
    "RateState",
    "RunEstimate",
    "estimate_run",
    "rate_headers",
]
