"""Log formats: JSON lines or console lines, chosen by the setting and by the terminal."""

from __future__ import annotations

import datetime
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from ccgate.config import ConfigError, load_settings
from ccgate.logs import HotLogger, IsoUtcStamper, configure_logging, resolve_format

SECRET = "sk-ant-local-secret-value"


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        """Pretend to be a terminal."""
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Put structlog back as it was after each test."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_logs_auto_is_json_off_a_terminal_and_console_on_one() -> None:
    """`auto` picks JSON for a pipe or file and console lines for a terminal."""
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("auto", Terminal()) == "console"
    assert resolve_format("json", Terminal()) == "json"
    assert resolve_format("console", io.StringIO()) == "console"


def test_logs_format_setting_refuses_unknown_values() -> None:
    """CCGATE_LOG_FORMAT accepts auto, json or console and names the key otherwise."""
    assert load_settings({}).log_format == "auto"
    with pytest.raises(ConfigError, match="CCGATE_LOG_FORMAT"):
        load_settings({"CCGATE_LOG_FORMAT": "xml"})


def test_logs_json_format_writes_one_json_object_per_line() -> None:
    """The JSON format writes parseable lines with the event and its fields."""
    out = io.StringIO()
    configure_logging("info", "json", out)
    structlog.get_logger("t").info("request", status=200)
    assert json.loads(out.getvalue())["status"] == 200


def test_logs_console_on_a_terminal_is_coloured() -> None:
    """On a terminal the console format colours its lines; in a file it does not."""
    tty, plain = Terminal(), io.StringIO()
    configure_logging("info", "auto", tty)
    structlog.get_logger("t").info("request", status=200)
    configure_logging("info", "console", plain)
    structlog.get_logger("t").info("request", status=200)
    assert "\x1b[" in tty.getvalue()
    assert "\x1b[" not in plain.getvalue() and "status=200" in plain.getvalue()


def test_logs_console_escapes_control_characters_from_clients() -> None:
    """A client-chosen value cannot forge a line or send terminal escapes to the console."""
    out = Terminal()
    configure_logging("info", "console", out)
    structlog.get_logger("t").info("request", path="/x\x1b[2J\nforged\x9b31m")
    assert out.getvalue().count("\n") == 1
    assert "\\x1b[2J\\x0aforged\\x9b31m" in out.getvalue()


def test_logs_console_traceback_shows_no_local_variables() -> None:
    """A logged exception's traceback never prints the frames' local variables."""
    out = Terminal()
    configure_logging("info", "console", out)

    def fails(api_key: str) -> None:
        raise ValueError("upstream refused")

    try:
        fails(SECRET)
    except ValueError:
        structlog.get_logger("t").exception("run_crashed")
    assert "upstream refused" in out.getvalue()
    assert SECRET not in out.getvalue()


_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{6})?Z")


def _access_fields() -> dict[str, Any]:
    return {
        "request_id": "req_0123456789abcdef0123456789abcdef",
        "method": "POST",
        "path": "/v1/m\x1b[2J\u00e9\u2603\nforged",
        "status": 200,
        "duration_ms": 1.25,
        "key": None,
        "client": "127.0.0.1",
        "ok": True,
        "where": Path("/tmp/x"),  # not a JSON type: the renderer's fallback writes its repr
    }


@pytest.mark.parametrize("log_format", ["json", "console", "tty"])
@pytest.mark.parametrize("level", ["debug", "info", "warning"])
def test_logs_access_line_writer_writes_what_structlog_writes(log_format: str, level: str) -> None:
    """The per-request line writer prints the same bytes as a structlog logger, in every
    format and level, context variables included."""
    ours, theirs = (Terminal() if log_format == "tty" else io.StringIO() for _ in range(2))
    fmt = "console" if log_format == "tty" else log_format
    with structlog.contextvars.bound_contextvars(tenant="t1"):
        configure_logging(level, fmt, theirs)
        structlog.get_logger("ccgate.http").info("request", **_access_fields())
        structlog.get_logger("ccgate.http").info("request", **_access_fields())
        configure_logging(level, fmt, ours)
        HotLogger("ccgate.http").info("request", _access_fields())
        HotLogger("ccgate.http").info("request", _access_fields())

    assert _STAMP.sub("T", ours.getvalue()) == _STAMP.sub("T", theirs.getvalue())
    assert (ours.getvalue().count("tenant") == 2) == (level != "warning")


def test_logs_access_line_writer_follows_a_log_capture() -> None:
    """While logs are captured (another configuration), the lines go to the capture."""
    out = io.StringIO()
    configure_logging("info", "json", out)
    with structlog.testing.capture_logs() as captured:
        HotLogger("ccgate.http").info("request", {"status": 201})
    HotLogger("ccgate.http").info("request", {"status": 202})

    assert captured == [{"status": 201, "event": "request", "log_level": "info"}]
    assert [json.loads(line)["status"] for line in out.getvalue().splitlines()] == [202]


@pytest.mark.parametrize(
    "micros",
    [0, 1, 999_999, 1_000_000, 1_700_000_000_000_000, 1_700_000_000_123_456, 1_700_000_001_000_007],
)
def test_logs_timestamps_read_as_structlogs(micros: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Log timestamps are written exactly as structlog's ISO UTC stamper writes them (no
    fraction at a whole second), nanoseconds cut to microseconds."""
    frozen = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
        microseconds=micros
    )

    class FrozenDatetime(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> FrozenDatetime:
            return frozen  # type: ignore[return-value]

    monkeypatch.setattr(
        structlog.processors,
        "datetime",
        SimpleNamespace(datetime=FrozenDatetime, timezone=datetime.timezone),
    )
    stamper = IsoUtcStamper(clock=lambda: micros * 1000 + 999)
    expected = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "info", {})
    assert stamper(None, "info", {}) == expected
    assert stamper(None, "info", {}) == expected  # the second within the same second, cached
