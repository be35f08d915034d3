"""Identifiers ccgate hands out (jobs, sessions, messages, deliveries)."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """A random, URL-safe identifier such as ``job_3f9a...``."""
    return f"{prefix}_{secrets.token_hex(12)}"
