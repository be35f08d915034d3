"""Which models a request may name: the allowlist shared by every door."""

from __future__ import annotations

import fnmatch
import re

# A model name reaches the CLI's argv; this shape keeps it from ever reading as a flag.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/\[\]-]{0,199}$")


class ModelNotAllowed(ValueError):
    """The requested model is malformed or not on the allowlist."""


class ModelPolicy:
    """The default model and the allowlist (names, with ``*`` wildcards)."""

    def __init__(self, allowed: tuple[str, ...], default: str) -> None:
        self.allowed = allowed
        self.default = default

    def permits(self, name: str) -> bool:
        """True if ``name`` is well-formed and on the allowlist."""
        return bool(_MODEL_NAME.fullmatch(name)) and any(
            fnmatch.fnmatchcase(name, pattern) for pattern in self.allowed)

    def resolve(self, requested: str | None) -> str:
        """Return the model to run, or raise ModelNotAllowed naming the allowed ones."""
        name = requested if requested is not None else self.default
        if not self.permits(name):
            raise ModelNotAllowed(
                f"model {name!r} is not allowed; allowed: {', '.join(self.allowed)}")
        return name
