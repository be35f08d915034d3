"""The door registry: every door ccgate serves, declared once.

Audit rows (the ``door`` column), error rendering (which shape a failure takes) and rate-limit
headers (which names and reset style) all read this table, so they agree. It is data only: no
HTTP framework here, so any layer may read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

ErrorShape = Literal["native", "anthropic", "openai"]
RateHeaderStyle = Literal["x-ratelimit", "anthropic"]


@dataclass(frozen=True)
class Door:
    """One door: its name, the paths it serves (prefixes, or exact paths), the error shape its
    failures take and the style of its rate-limit headers."""

    name: str
    prefixes: tuple[str, ...] = ()
    exact: tuple[str, ...] = ()
    error_shape: ErrorShape = "native"
    rate_headers: RateHeaderStyle = "x-ratelimit"

    def serves(self, path: str) -> bool:
        """True when ``path`` belongs to this door."""
        return path in self.exact or path.startswith(self.prefixes)


ANTHROPIC = Door("anthropic", ("/v1/messages",), error_shape="anthropic", rate_headers="anthropic")
OPENAI = Door(
    "openai",
    ("/v1/chat/", "/v1/completions", "/v1/embeddings", "/v1/responses"),
    error_shape="openai",
)
COMPAT = Door("compat", exact=("/run", "/v1/complete", "/files", "/healthz"))
NATIVE = Door("native", ("/api/", "/v1/"))
# The first door that serves a path owns it; native takes whatever no other door claims.
DOORS: tuple[Door, ...] = (ANTHROPIC, OPENAI, COMPAT, NATIVE)
BY_NAME: Mapping[str, Door] = {door.name: door for door in DOORS}
DOOR_NAMES: tuple[str, ...] = tuple(BY_NAME)
# Paths both SDKs call: the Anthropic SDK always sends ``anthropic-version``, the OpenAI SDK
# never does, so the caller's SDK names the door (for the audit row and the error shape).
SHARED_PREFIXES = ("/v1/models",)


def door_of(path: str, headers: Mapping[str, str] | None = None) -> Door:
    """The door serving a request to ``path`` with ``headers``."""
    if path.startswith(SHARED_PREFIXES):
        return ANTHROPIC if headers is not None and "anthropic-version" in headers else OPENAI
    for door in DOORS:
        if door.serves(path):
            return door
    return NATIVE


def door_named(name: str) -> Door:
    """The door called ``name``; ValueError naming the known doors otherwise."""
    door = BY_NAME.get(name)
    if door is None:
        raise ValueError(f"unknown door {name!r}; expected one of {', '.join(DOOR_NAMES)}")
    return door
