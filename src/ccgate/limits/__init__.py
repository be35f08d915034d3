"""Rate limits, quotas, budgets and concurrency per key, in memory or shared through Redis.

The doors call ``Limiter.admit`` after validating a request and ``Admission.release`` when it
ends; ``rate_headers`` turns the admission's ``RateState`` into each door's headers.
"""

from __future__ import annotations

from ccgate.limits.headers import RateState, rate_headers
from ccgate.limits.limiter import Admission, Limiter, LimitExceeded

__all__ = ["Admission", "LimitExceeded", "Limiter", "RateState", "rate_headers"]
