"""The console's static files ship inside the wheel, so an installed ccgate can serve them."""

from __future__ import annotations

import zipfile
from pathlib import Path

from hatchling.builders.wheel import WheelBuilder

ROOT = Path(__file__).resolve().parents[2]
WEB_DIR = ROOT / "src" / "ccgate" / "web"


def test_console_wheel_ships_every_web_file(tmp_path: Path) -> None:
    """Building the wheel puts every file of src/ccgate/web (pages, scripts, styles) in it."""
    built = WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"])
    with zipfile.ZipFile(next(iter(built))) as wheel:
        names = set(wheel.namelist())
    expected = {f"ccgate/web/{path.name}" for path in WEB_DIR.iterdir() if path.is_file()}
    assert {"ccgate/web/playground.html", "ccgate/web/common.js"} <= expected
    assert expected - names == set()
