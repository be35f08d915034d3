"""``ccgate.client`` stays a separate library: httpx and the standard library only."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import ccgate.client
server = sorted(name for name in sys.modules
                if name.startswith("ccgate.") and not name.startswith("ccgate.client"))
other = [name for name in ("fastapi", "starlette", "pydantic", "sqlalchemy", "structlog")
         if name in sys.modules]
print(server + other)
"""


def test_client_package_imports_no_server_module() -> None:
    """Importing ``ccgate.client`` loads none of the server's modules or frameworks."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
