"""Where the real, pinned `claude` CLI for the end-to-end tests lives (if anywhere)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ENV_KEY = "CCGATE_TEST_CLAUDE"
# scripts/test.sh installs the pinned CLI here, never globally.
LOCAL_INSTALL = Path(__file__).resolve().parents[2] / ".tools" / "node_modules" / ".bin" / "claude"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_real_claude() -> Path | None:
    """Return the claude CLI to test against: $CCGATE_TEST_CLAUDE, ./.tools, then PATH."""
    configured = os.environ.get(ENV_KEY, "").strip()
    if configured:
        path = Path(configured).expanduser()
        return path if _executable(path) else None
    if _executable(LOCAL_INSTALL):
        return LOCAL_INSTALL
    found = shutil.which("claude")
    return Path(found) if found else None
