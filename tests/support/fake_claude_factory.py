"""Install the fake `claude` executable into a test's directory.

``make_fake_claude(tmp_path, "upstream_error", status=429)`` returns a path to
hand to the gateway as its CLI; callers add no argv and no environment.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from tests.support.fake_claude import ARGV0_FLAG, CONFIG_FLAG, CONFIG_NAME

FAKE_CLAUDE = Path(__file__).resolve().with_name("fake_claude.py")


def make_fake_claude(dir: Path, scenario: str = "text", **params: Any) -> Path:
    """Write ``dir/claude`` and its ``dir/fake-claude.json``; return the wrapper's path.

    The wrapper is a ``#!/bin/sh`` script that execs this interpreter (absolute
    path, so a scrubbed PATH cannot pick another Python) on fake_claude.py.
    ``-I -S`` keeps start-up fast and immune to PYTHON* variables. The wrapper
    hands over the config path and its own ``$0`` because, after ``exec``,
    the fake's ``sys.argv[0]`` is fake_claude.py rather than the wrapper.
    """
    dir.mkdir(parents=True, exist_ok=True)
    config = dir / CONFIG_NAME
    config.write_text(json.dumps({"scenario": scenario, **params}, indent=2), encoding="utf-8")
    wrapper = dir / "claude"
    command = [sys.executable, "-I", "-S", str(FAKE_CLAUDE), CONFIG_FLAG, str(config)]
    script = f'#!/bin/sh\nexec {shlex.join(command)} {ARGV0_FLAG} "$0" "$@"\n'
    wrapper.write_text(script, encoding="utf-8")
    wrapper.chmod(0o755)
    return wrapper
