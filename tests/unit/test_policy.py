"""The key-policy table: every layer built from it agrees with it, and with the docs."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer.main

from ccgate.api.admin import PolicyBody
from ccgate.api.enroll import EnrollmentBody
from ccgate.cli import app
from ccgate.limits.rules import QUOTA_RULES, WINDOW_RULES
from ccgate.policy import (
    FIELD_NAMES,
    POLICY_FIELDS,
    KeyPolicy,
    PolicyError,
    docs_field_table,
    docs_option_table,
    policy_from_json,
    policy_from_row,
    policy_to_json,
    policy_to_row,
    policy_with,
)
from ccgate.store.schema import api_keys

ADMIN_DOC = Path(__file__).resolve().parents[2] / "docs" / "admin.md"
_SQL_TYPE = {"integer": "INTEGER", "float": "FLOAT", "json": "JSON", "datetime": "DATETIME"}
FULL = KeyPolicy(
    rpm=1,
    rpd=2,
    tokens_per_day=3,
    budget_usd_per_month=4.5,
    concurrency=5,
    models=("haiku", "claude-*"),
    ip_cidrs=("10.0.0.0/8",),
    expires_at=datetime(2030, 1, 2, 3, 4, tzinfo=UTC),
    window_share=0.5,
)


def test_policy_key_policy_has_one_attribute_per_table_row() -> None:
    """KeyPolicy's attributes are the table's fields, in the same order."""
    assert tuple(f.name for f in dataclasses.fields(KeyPolicy)) == FIELD_NAMES


def test_policy_full_example_sets_every_field() -> None:
    """The round-trip example below leaves no field unset, so it covers every row."""
    assert all(getattr(FULL, name) is not None for name in FIELD_NAMES)


def test_policy_row_and_json_mappings_round_trip() -> None:
    """A policy survives the api_keys row mapping and the enrollments' JSON mapping."""
    assert policy_from_row(policy_to_row(FULL)) == FULL
    assert policy_from_json(policy_to_json(FULL)) == FULL
    assert policy_to_json(FULL)["models"] == ["haiku", "claude-*"]
    assert policy_to_json(FULL)["expires_at"] == "2030-01-02T03:04:00+00:00"


def test_policy_every_field_has_an_api_keys_column_of_its_kind() -> None:
    """Each field is stored in the api_keys column of its name, of the type its kind says."""
    for spec in POLICY_FIELDS:
        column = api_keys.c[spec.name]
        assert column.nullable
        assert _SQL_TYPE[spec.kind.column] in str(column.type.compile()).upper(), spec.name


def test_policy_docs_tables_match_the_table() -> None:
    """docs/admin.md's field table and `ccgate keys` option table are the table's rendering."""
    doc = ADMIN_DOC.read_text().splitlines()
    for table in (docs_field_table(), docs_option_table()):
        start = doc.index(table[0])
        assert doc[start : start + len(table)] == table
        assert not doc[start + len(table)].startswith("|"), "the docs table has extra rows"


def test_policy_bodies_carry_every_field() -> None:
    """The admin key body has every field; the enrollment body every field with device help."""
    assert set(FIELD_NAMES) <= set(PolicyBody.model_fields)
    device = {f.name for f in POLICY_FIELDS if f.device_help is not None}
    assert device <= set(EnrollmentBody.model_fields)
    assert "window_share" not in EnrollmentBody.model_fields


@pytest.mark.parametrize("command", ["create", "update"])
def test_policy_keys_commands_have_one_option_per_field(command: str) -> None:
    """`ccgate keys create|update` offer --<option> for every field, lists repeatable."""
    keys: Any = typer.main.get_command(app).commands["keys"]  # type: ignore[attr-defined]
    params = {p.opts[0]: p for p in keys.commands[command].params if p.opts}
    for spec in POLICY_FIELDS:
        assert params[f"--{spec.option}"].multiple == spec.kind.repeatable, spec.name


def test_policy_limiter_rules_name_policy_fields() -> None:
    """Every limiter rule enforces a field of the table."""
    assert {r.field for r in (*WINDOW_RULES, *QUOTA_RULES)} <= set(FIELD_NAMES)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rpm", 0, "must be a whole number from 1 to 2147483647"),
        ("rpd", True, "must be a whole number from 1 to 2147483647"),
        ("budget_usd_per_month", -1, "must be a number of US dollars, 0 or more"),
        ("window_share", 1.5, "must be a fraction above 0 and at most 1"),
        ("models", [], "must be a non-empty list of names"),
        ("ip_cidrs", ["10.0.0.300/8"], "does not appear to be an IPv4 or IPv6 network"),
        ("expires_at", "2001-01-01", "must be in the future"),
        ("colour", 1, "not a policy field"),
    ],
)
def test_policy_with_refuses_a_bad_value_naming_its_field(
    field: str, value: object, message: str
) -> None:
    """Each kind's check refuses a bad value with a PolicyError naming the field."""
    with pytest.raises(PolicyError) as caught:
        policy_with(KeyPolicy(), {field: value})
    assert caught.value.field == field and message in caught.value.message


def test_policy_with_normalises_and_clears() -> None:
    """Checked values are normalised (CIDRs, floats, UTC times) and None clears a field."""
    later = (datetime.now(UTC) + timedelta(days=1)).replace(tzinfo=None).isoformat()
    policy = policy_with(
        KeyPolicy(rpm=5),
        {"rpm": None, "ip_cidrs": ["10.1.2.3/8"], "window_share": 1, "expires_at": later},
    )
    assert policy.rpm is None and policy.ip_cidrs == ("10.0.0.0/8",)
    assert policy.window_share == 1.0 and isinstance(policy.window_share, float)
    assert policy.expires_at is not None and policy.expires_at.tzinfo == UTC
