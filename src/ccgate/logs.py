"""Structured logs on stderr, as JSON lines or readable console lines.

Prompts and keys are never passed to a logger. Values that are passed (paths, hosts, error
text) may still hold what a client chose, so the console format escapes control characters:
a client cannot move a terminal's cursor, recolour it or forge a line break in it.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from typing import IO, Any, TextIO

import structlog
from structlog.types import EventDict, ExcInfo, Processor, WrappedLogger

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("auto", "json", "console")
# C0 controls, DEL and C1 controls (0x9b starts a terminal escape sequence like ESC [ does).
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROLS_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def resolve_format(log_format: str, stream: TextIO) -> str:
    """``json`` or ``console``: ``auto`` picks console only when ``stream`` is a terminal."""
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r}")
    if log_format != "auto":
        return log_format
    isatty = getattr(stream, "isatty", None)
    return "console" if isatty is not None and isatty() else "json"


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character written as ``\\xNN``."""
    pattern = _CONTROLS_BUT_NEWLINE if keep_newlines else _CONTROLS
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _escape_values(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Escape control characters in every text value of a console line."""
    return {
        key: escape_controls(value) if isinstance(value, str) else value
        for key, value in event.items()
    }


def _plain_traceback(sio: IO[str], exc_info: ExcInfo) -> None:
    """A standard traceback, without local variables (they may hold prompts or keys)."""
    text = "".join(traceback.format_exception(*exc_info))
    sio.write("\n" + escape_controls(text, keep_newlines=True))


def _renderer(log_format: str, colors: bool) -> list[Processor]:
    if log_format == "json":
        return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    # The console renderer formats exceptions itself; the default formatter would print
    # every frame's local variables, prompts and keys among them.
    return [
        _escape_values,
        structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=_plain_traceback, sort_keys=False
        ),
    ]


def configure_logging(
    level: str = "info", log_format: str = "json", stream: TextIO | None = None
) -> str:
    """Send lines at ``level`` and above to ``stream`` (stderr) as JSON or console lines
    (``auto``: console on a terminal); return the format chosen."""
    out = stream if stream is not None else sys.stderr
    chosen = resolve_format(log_format, out)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        *_renderer(chosen, colors=chosen == "console" and out.isatty()),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    return chosen
