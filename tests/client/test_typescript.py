"""The TypeScript client's own tests (node's test runner) against a real ``ccgate serve``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.client.conftest import Gateway
from tests.client.dropping_proxy import DroppingProxy
from tests.conftest import service_missing

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "typescript"
NPM_TIMEOUT_SECS = 300


def test_typescript_client_passes_its_tests_against_a_real_server(gateway: Gateway) -> None:
    """``npm test`` in clients/typescript builds the package and passes every test, the
    dropped-stream resume included."""
    npm = shutil.which("npm")
    if npm is None or not (PACKAGE / "node_modules" / "typescript").is_dir():
        service_missing(
            "the TypeScript client's tools are not installed: run scripts/test.sh "
            "(npm ci in clients/typescript)"
        )
    assert npm is not None
    with DroppingProxy(gateway.server.port, drops=1, after_events=2) as proxy:
        env = {
            **os.environ,
            "CCGATE_URL": gateway.url,
            "CCGATE_KEY": gateway.key(),
            "CCGATE_TEST_DROP_URL": proxy.url,
            "CCGATE_TEST_LIST_KEY": gateway.key(),
            "CCGATE_TEST_RPM1_KEY": gateway.key(rpm=1),
        }
        done = subprocess.run(
            [npm, "test"],
            cwd=PACKAGE,
            env=env,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_SECS,
            check=False,
        )
        dropped = proxy.dropped
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = re.search(r"^# pass (\d+)$", done.stdout, re.MULTILINE)
    assert "# fail 0" in done.stdout and passed is not None and int(passed.group(1)) > 0
    assert dropped == 1
