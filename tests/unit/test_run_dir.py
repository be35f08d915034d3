"""The run directory: fresh, private and named by a symlink-free path."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ccgate.runners.run_dir import RunDir


def test_run_dir_under_a_symlinked_work_dir_has_a_real_path(tmp_path: Path) -> None:
    """Made below a work dir reached through a symlink, the path has no symlink in it."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    first = RunDir.create(str(tmp_path / "link"), "ccgate-run-")
    second = RunDir.create(str(tmp_path / "link"), "ccgate-run-")
    for made in (first, second):
        assert os.path.realpath(made.path) == made.path
        assert Path(made.path).parent == real
        assert stat.S_IMODE(Path(made.path).stat().st_mode) == 0o700
    assert first.path != second.path
