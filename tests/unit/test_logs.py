"""Log formats: JSON lines or console lines, chosen by the setting and by the terminal."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from ccgate.config import ConfigError, load_settings
from ccgate.logs import configure_logging, resolve_format

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
