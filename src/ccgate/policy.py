"""The key policy: what one key may do, each field declared once in ``POLICY_FIELDS``.

The store's row and JSON mapping, the admin and enrollment request bodies, the keyring's
checks, the ``ccgate keys`` options and the docs' policy table are all built from that table.
This module imports nothing of the store, the API or the limiter.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import Field, StrictFloat, StrictInt, StrictStr

from ccgate.clock import utcnow

MAX_INT = 2**31 - 1  # the limit columns are 32-bit integers
MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class KeyPolicy:
    """What one key may do; None everywhere means no limit of that kind.

    One attribute per row of ``POLICY_FIELDS`` (a test keeps the two in step).
    """

    rpm: int | None = None
    rpd: int | None = None
    tokens_per_day: int | None = None
    budget_usd_per_month: float | None = None
    concurrency: int | None = None
    models: tuple[str, ...] | None = None
    ip_cidrs: tuple[str, ...] | None = None
    expires_at: datetime | None = None
    # The most of each plan window this key may use, as a fraction (0 < x <= 1).
    window_share: float | None = None

    def as_json(self) -> dict[str, Any]:
        """The policy as JSON-ready values (lists, ISO timestamps)."""
        return policy_to_json(self)


class PolicyError(ValueError):
    """A policy field given a value it cannot take; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _same(value: Any) -> Any:
    return value


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _check_count(field: str, value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INT:
        raise PolicyError(field, f"must be a whole number from 1 to {MAX_INT}")
    return value


def _check_usd(field: str, value: object) -> object:
    if not _number(value) or value < 0:  # type: ignore[operator]
        raise PolicyError(field, "must be a number of US dollars, 0 or more")
    return float(value)  # type: ignore[arg-type]


def _check_fraction(field: str, value: object) -> object:
    if not _number(value) or not 0 < value <= 1:  # type: ignore[operator]
        raise PolicyError(field, "must be a fraction above 0 and at most 1")
    return float(value)  # type: ignore[arg-type]


def _check_names(field: str, value: object) -> tuple[str, ...]:
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(
            isinstance(n, str) and n and n == n.strip() and len(n) <= MAX_NAME_CHARS for n in value
        )
    ):
        raise PolicyError(
            field,
            f"must be a non-empty list of names (1-{MAX_NAME_CHARS} "
            "characters, no surrounding spaces); null allows any",
        )
    return tuple(dict.fromkeys(value))


def _check_cidrs(field: str, value: object) -> tuple[str, ...]:
    names = _check_names(field, value)
    try:
        return tuple(dict.fromkeys(str(ipaddress.ip_network(n, strict=False)) for n in names))
    except ValueError as exc:
        raise PolicyError(field, str(exc)) from None


def _check_future_time(field: str, value: object) -> datetime:
    when = value
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise PolicyError(field, f"{value!r} is not an ISO 8601 date or time") from None
    if not isinstance(when, datetime):
        raise PolicyError(field, "must be an ISO 8601 date or time")
    try:
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except OverflowError:
        raise PolicyError(field, "must fall between the years 1 and 9999 in UTC") from None
    if when <= utcnow():
        raise PolicyError(field, "must be in the future")
    return when


@dataclass(frozen=True)
class Kind:
    """How one kind of policy value is typed, checked, stored and shown."""

    body_type: Any  # its pydantic type in request bodies (``| None`` is added)
    cli_type: Any  # its typer option type
    doc_type: str  # the docs table's "type" column
    column: str  # what its store column holds: integer, float, json or datetime
    check: Callable[[str, object], object]  # raises PolicyError; returns the stored value
    to_json: Callable[[Any], Any] = _same
    from_json: Callable[[Any], Any] = _same
    to_row: Callable[[Any], Any] = _same
    from_row: Callable[[Any], Any] = _same

    @property
    def repeatable(self) -> bool:
        """True for list kinds: the CLI option is given once per item."""
        return self.to_row is list


COUNT = Kind(StrictInt, int, "integer", "integer", _check_count)
USD = Kind(StrictFloat, float, "number", "float", _check_usd)
FRACTION = Kind(StrictFloat | StrictInt, float, "number", "float", _check_fraction)
NAMES = Kind(
    list[StrictStr], list[str], "list of strings", "json", _check_names, list, tuple, list, tuple
)
CIDRS = replace(NAMES, check=_check_cidrs)
FUTURE_TIME = Kind(
    StrictStr,
    str,
    "string",
    "datetime",
    _check_future_time,
    to_json=datetime.isoformat,
    from_json=datetime.fromisoformat,
)


@dataclass(frozen=True)
class PolicyField:
    """One policy field: its kind, its help in the API, the docs and the CLI."""

    name: str
    kind: Kind
    help: str  # the admin key body's description
    rule: str  # the docs table's "rule" column
    option: str  # the ``ccgate keys`` option, without its dashes
    metavar: str  # the option's value in the docs (N, X, ISO ...)
    option_help: str
    # The enrollment body's description (limits there count per device); None: an
    # enrollment cannot set this field.
    device_help: str | None = None


POLICY_FIELDS: tuple[PolicyField, ...] = (
    PolicyField(
        "rpm", COUNT, "Requests per minute.",
        f"requests per minute, 1 to {MAX_INT}",
        "rpm", "N", "Requests per minute.",
        "Requests per minute, per device.",
    ),
    PolicyField(
        "rpd", COUNT, "Requests per UTC day.",
        f"requests per day, 1 to {MAX_INT}",
        "rpd", "N", "Requests per UTC day.",
        "Requests per UTC day, per device.",
    ),
    PolicyField(
        "tokens_per_day", COUNT, "Input + output tokens per day.",
        f"input + output tokens per UTC day, 1 to {MAX_INT}",
        "tokens-per-day", "N", "Input + output tokens per UTC day.",
        "Tokens per day, per device.",
    ),
    PolicyField(
        "budget_usd_per_month", USD, "Spend cap per month.",
        "spend per UTC calendar month in USD, 0 or more",
        "budget-usd", "X", "Spend cap in USD per calendar month.",
        "Spend cap per month, per device.",
    ),
    PolicyField(
        "concurrency", COUNT, "Jobs running at once.",
        f"requests and jobs of the key running at once, 1 to {MAX_INT}",
        "concurrency", "N", "Jobs running at once.",
        "Jobs running at once, per device.",
    ),
    PolicyField(
        "models", NAMES, "Allowed models; globs allowed.",
        "models the key may use; globs such as `claude-*` allowed; at least one name",
        "model", "M", "A model (or glob like 'claude-*') the key may use; repeat for more.",
        "Allowed models; globs allowed.",
    ),
    PolicyField(
        "ip_cidrs", CIDRS, "Client networks allowed.",
        "client networks the key may call from, e.g. `10.0.0.0/8`, `2001:db8::/32`, a bare "
        "address; at least one; stored normalised (`10.1.2.3/8` becomes `10.0.0.0/8`)",
        "ip-cidr", "C", "A client network (CIDR) the key may call from; repeat for more.",
        "Client networks allowed.",
    ),
    PolicyField(
        "expires_at", FUTURE_TIME, "ISO 8601; must be in the future.",
        "ISO 8601 date or date-time, in the future and before the year 10000 in UTC; no zone "
        "means UTC. After it the key gets 401",
        "expires-at", "ISO", "ISO 8601 date or time (UTC unless it names a zone) it stops working.",
    ),
    PolicyField(
        "window_share", FRACTION, "The most of each plan window the key may use, in (0, 1].",
        "the most of each subscription plan window the key may use, above 0 and at most 1 "
        "([quota.md](quota.md))",
        "window-share", "X", "The most of each plan window the key may use, a fraction in (0, 1].",
    ),
)  # fmt: skip
FIELD_NAMES = tuple(f.name for f in POLICY_FIELDS)
_BY_NAME = {f.name: f for f in POLICY_FIELDS}


def policy_with(base: KeyPolicy, changes: Mapping[str, object]) -> KeyPolicy:
    """``base`` with each of ``changes`` checked and applied; None clears that limit.

    Raises PolicyError naming the first field that is unknown or has a bad value.
    """
    values: dict[str, object] = {}
    for name, value in changes.items():
        spec = _BY_NAME.get(name)
        if spec is None:
            raise PolicyError(name, "not a policy field")
        values[name] = None if value is None else spec.kind.check(name, value)
    return replace(base, **values)  # type: ignore[arg-type]


def _convert(policy: KeyPolicy, way: str) -> dict[str, Any]:
    out = {}
    for spec in POLICY_FIELDS:
        value = getattr(policy, spec.name)
        out[spec.name] = None if value is None else getattr(spec.kind, way)(value)
    return out


def _from(values: Mapping[str, Any], way: str) -> KeyPolicy:
    out = {}
    for spec in POLICY_FIELDS:
        value = values.get(spec.name)
        out[spec.name] = None if value is None else getattr(spec.kind, way)(value)
    return KeyPolicy(**out)


def policy_to_row(policy: KeyPolicy) -> dict[str, Any]:
    """The policy as the ``api_keys`` columns of the same names hold it."""
    return _convert(policy, "to_row")


def policy_from_row(row: Mapping[str, Any]) -> KeyPolicy:
    """The policy in a row holding the ``api_keys`` policy columns."""
    return _from(row, "from_row")


def policy_to_json(policy: KeyPolicy) -> dict[str, Any]:
    """The policy as JSON-ready values (lists, ISO timestamps), every field present."""
    return _convert(policy, "to_json")


def policy_from_json(data: Mapping[str, Any]) -> KeyPolicy:
    """The policy ``policy_to_json`` wrote; absent fields are None."""
    return _from(data, "from_json")


def body_fields(*, device: bool = False) -> dict[str, Any]:
    """The policy fields of a request body, as ``pydantic.create_model`` takes them.

    ``device``: the enrollment body's fields (those with a ``device_help``) and descriptions.
    """
    fields: dict[str, Any] = {}
    for spec in POLICY_FIELDS:
        description = spec.device_help if device else spec.help
        if description is not None:
            fields[spec.name] = (spec.kind.body_type | None, Field(None, description=description))
    return fields


def docs_field_table() -> list[str]:
    """The docs' policy table (docs/admin.md, "Key policy"), one Markdown line per row."""
    lines = ["| field | type | rule |", "| --- | --- | --- |"]
    lines += [f"| `{f.name}` | {f.kind.doc_type} | {f.rule} |" for f in POLICY_FIELDS]
    return lines


def docs_option_table() -> list[str]:
    """The docs' ``ccgate keys`` option table (docs/admin.md), one Markdown line per row."""
    lines = ["| option | policy field |", "| --- | --- |"]
    for f in POLICY_FIELDS:
        repeat = " (repeatable)" if f.kind.repeatable else ""
        lines.append(f"| `--{f.option} {f.metavar}`{repeat} | `{f.name}` |")
    return lines
