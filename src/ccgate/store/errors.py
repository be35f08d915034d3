"""What store operations raise that callers above the store handle."""

from __future__ import annotations


class AlreadyExists(Exception):
    """A row with the same unique name or id is stored already."""
