"""Keys and tokens out of text that may reach a client or a log (stderr tails, upstream errors)."""

from __future__ import annotations

import re

# Secrets that must not leak through a stderr tail or an upstream message into an error.
_SECRET_PATTERN = re.compile(r"(sk-ant-[A-Za-z0-9_-]+|ccg_[A-Za-z0-9_-]+|Bearer\s+\S+)")


def redact(text: str) -> str:
    """Replace anything shaped like a key or bearer token with ``[redacted]``."""
    return _SECRET_PATTERN.sub("[redacted]", text)
