"""A RunRequest as the store keeps it, so any node can run a job another node accepted."""

from __future__ import annotations

import dataclasses
from typing import Any

from ccgate.runners.base import RunRequest
from ccgate.structured import asking_for_schema

_FIELDS = {f.name for f in dataclasses.fields(RunRequest)}
_NAMES = tuple(f.name for f in dataclasses.fields(RunRequest))
_SCALARS = frozenset({str, int, float, bool, type(None)})


class _NotPlain(Exception):
    """A value holds something other than JSON's dicts, lists and scalars."""


def _plain_copy(value: Any) -> Any:
    # What dataclasses.asdict makes of a JSON-shaped value (a deep copy), without its
    # per-value dispatch and deepcopy calls: five times faster on every job stored.
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is dict:
        return {(k if type(k) is str else _plain_copy(k)): _plain_copy(v) for k, v in value.items()}
    if kind is list:
        return [_plain_copy(v) for v in value]
    raise _NotPlain


def _as_dict(request: RunRequest) -> dict[str, Any]:
    """``dataclasses.asdict(request)``: the same dict, a copy sharing nothing mutable."""
    try:
        return {name: _plain_copy(getattr(request, name)) for name in _NAMES}
    except _NotPlain:  # anything else (a tuple, a dataclass) as asdict copies it
        return dataclasses.asdict(request)


def request_to_json(
    request: RunRequest, *, json_schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON-ready form of ``request``. With ``json_schema`` (a schema that passed
    ``structured.check_schema``) the model is told the schema, and the job's answer is read as
    JSON and validated against it when the job ends, with one repair run if it does not match
    (``jobs/schema_repair.py``)."""
    if json_schema is None:
        return _as_dict(request)
    data = _as_dict(asking_for_schema(request, json_schema))
    data.update(response_format="json", json_schema=json_schema)
    return data


def request_from_json(data: dict[str, Any]) -> RunRequest:
    """Rebuild a RunRequest; keys a newer version added are ignored."""
    return RunRequest(**{k: v for k, v in data.items() if k in _FIELDS})
