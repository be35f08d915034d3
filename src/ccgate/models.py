"""Which models a request may name: aliases and the allowlists shared by every door."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass

# A model name reaches the CLI's argv; this shape keeps it from ever reading as a flag.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/\[\]-]{0,199}$")

# The family names every Claude client knows. The CLI resolves them itself (to the newest
# model of the family it knows), so on the CLI backend they pass through unchanged; the API
# needs full ids, so the API backend maps them here unless CCGATE_MODEL_ALIASES says otherwise.
API_FAMILY_ALIASES: Mapping[str, str] = {
    "haiku": "claude-haiku-5-5",
    "sonnet": "claude-sonnet-5-5",
    "opus": "claude-opus-5-5",
}

# Model ids listed by GET /v1/models when the allowlist holds a wildcard such as claude-*.
KNOWN_MODELS: tuple[tuple[str, str, str], ...] = (
    ("claude-opus-5-5", "Claude Opus 5.5", "2026-09-01T00:00:00Z"),
    ("claude-sonnet-5-5", "Claude Sonnet 5.5", "2026-09-01T00:00:00Z"),
    ("claude-haiku-5-5", "Claude Haiku 5.5", "2026-09-01T00:00:00Z"),
    ("claude-opus-4-5", "Claude Opus 4.5", "2025-11-24T00:00:00Z"),
    ("claude-sonnet-4-5", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    ("claude-haiku-4-5", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
)


class ModelNotAllowed(ValueError):
    """The requested model is malformed or not on the server's allowlist (400)."""


class ModelForbidden(ValueError):
    """The model is served, but the calling key's ``models`` list does not include it (403)."""


@dataclass(frozen=True)
class ListedModel:
    """One entry of GET /v1/models."""

    id: str
    display_name: str
    created_at: str


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


class ModelPolicy:
    """The default model, aliases, and the allowlist (names, with ``*`` wildcards)."""

    def __init__(
        self,
        allowed: tuple[str, ...],
        default: str,
        aliases: Mapping[str, str] | None = None,
        family_aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.allowed = allowed
        self.default = default
        self.aliases = dict(aliases or {})
        self.family_aliases = dict(family_aliases or {})

    def target(self, name: str) -> str:
        """What ``name`` runs as: an operator alias first, then a family alias, else itself."""
        name = self.aliases.get(name, name)
        return self.family_aliases.get(name, name)

    def _names_of(self, name: str) -> tuple[str, ...]:
        return (name, self.aliases.get(name, name), self.target(name))

    def permits(self, name: str) -> bool:
        """True if ``name`` is well-formed and it (or what it maps to) is on the allowlist."""
        return bool(_MODEL_NAME.fullmatch(name)) and any(
            _matches(n, self.allowed) for n in self._names_of(name)
        )

    def resolve(self, requested: str | None, key_models: tuple[str, ...] | None = None) -> str:
        """Return the model to run for ``requested``.

        Raises ModelNotAllowed when the server does not serve it and ModelForbidden when the
        key's own ``models`` list leaves it out.
        """
        name = requested if requested is not None else self.default
        if not self.permits(name):
            raise ModelNotAllowed(
                f"model {name!r} is not allowed; allowed: {', '.join(self.allowed)}"
            )
        if key_models is not None and not any(
            _matches(n, key_models) for n in self._names_of(name)
        ):
            raise ModelForbidden(
                f"this key may not use model {name!r}; it may use: "
                f"{', '.join(key_models) or 'no model'}"
            )
        target = self.target(name)
        if not _MODEL_NAME.fullmatch(target):
            raise ModelNotAllowed(f"model alias {name!r} maps to a malformed name")
        return target

    def listing(self, key_models: tuple[str, ...] | None = None) -> list[ListedModel]:
        """The models a key may name: aliases, concrete allowlist entries and known ids."""
        names: dict[str, ListedModel] = {}
        created = "2025-01-01T00:00:00Z"
        for name in (*self.aliases, *self.family_aliases, *self.allowed):
            if "*" in name or "?" in name or "[" in name:
                continue
            names.setdefault(name, ListedModel(name, name, created))
        for model_id, display, made in KNOWN_MODELS:
            names.setdefault(model_id, ListedModel(model_id, display, made))
        return [m for m in names.values() if self._usable(m.id, key_models)]

    def _usable(self, name: str, key_models: tuple[str, ...] | None) -> bool:
        try:
            self.resolve(name, key_models)
        except (ModelNotAllowed, ModelForbidden):
            return False
        return True


def model_policy(
    allowed: tuple[str, ...], default: str, aliases: Mapping[str, str], *, full_ids: bool
) -> ModelPolicy:
    """The policy for a backend; one that needs full model ids (the API backend:
    ``Capabilities.full_model_ids``) gets family names mapped to them."""
    return ModelPolicy(allowed, default, aliases, API_FAMILY_ALIASES if full_ids else None)
