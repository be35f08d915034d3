"""A RunRequest as the store keeps it, so any node can run a job another node accepted."""

from __future__ import annotations

import dataclasses
from typing import Any

from ccgate.runners.base import RunRequest

_FIELDS = {f.name for f in dataclasses.fields(RunRequest)}


def request_to_json(request: RunRequest) -> dict[str, Any]:
    """The JSON-ready form of ``request``."""
    return dataclasses.asdict(request)


def request_from_json(data: dict[str, Any]) -> RunRequest:
    """Rebuild a RunRequest; keys a newer version added are ignored."""
    return RunRequest(**{k: v for k, v in data.items() if k in _FIELDS})
