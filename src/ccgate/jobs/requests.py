"""A RunRequest as the store keeps it, so any node can run a job another node accepted."""

from __future__ import annotations

import dataclasses
from typing import Any

from ccgate.runners.base import RunRequest
from ccgate.structured import asking_for_schema

_FIELDS = {f.name for f in dataclasses.fields(RunRequest)}


def request_to_json(
    request: RunRequest, *, json_schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON-ready form of ``request``. With ``json_schema`` (a schema that passed
    ``structured.check_schema``) the model is told the schema, and the job's answer is read as
    JSON and validated against it when the job ends, with one repair run if it does not match
    (``jobs/schema_repair.py``)."""
    if json_schema is None:
        return dataclasses.asdict(request)
    data = dataclasses.asdict(asking_for_schema(request, json_schema))
    data.update(response_format="json", json_schema=json_schema)
    return data


def request_from_json(data: dict[str, Any]) -> RunRequest:
    """Rebuild a RunRequest; keys a newer version added are ignored."""
    return RunRequest(**{k: v for k, v in data.items() if k in _FIELDS})
