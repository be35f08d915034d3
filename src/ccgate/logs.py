"""Structured logs on stderr, as JSON lines or readable console lines.

Prompts and keys are never passed to a logger. Values that are passed (paths, hosts, error
text) may still hold what a client chose, so the console format escapes control characters:
a client cannot move a terminal's cursor, recolour it or forge a line break in it.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Callable
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


# The encoder ``json.dumps`` uses when given no options: the JSON renderer's output for a line
# whose values are all plain JSON types (its ``default`` is only called for other values).
_PLAIN_JSON = json.JSONEncoder()


class IsoUtcStamper:
    """``structlog.processors.TimeStamper(fmt="iso", utc=True)``, the same text
    (``2025-01-31T09:08:07.123456Z``, no fraction at a whole second), with the date and time
    of day formatted once a second rather than for every line."""

    __slots__ = ("_clock", "_second")

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self._clock = clock
        self._second: tuple[int, str] = (-1, "")

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        # datetime.now() reads the same clock and floors it to the microsecond, as here.
        second, micro = divmod(self._clock() // 1000, 1_000_000)
        cached, prefix = self._second
        if second != cached:
            prefix = datetime.datetime.fromtimestamp(second, datetime.UTC).isoformat()[:19]
            self._second = (second, prefix)
        event_dict["timestamp"] = f"{prefix}.{micro:06d}Z" if micro else prefix + "Z"
        return event_dict


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
        IsoUtcStamper(),
        *_renderer(chosen, colors=chosen == "console" and out.isatty()),
    ]
    wrapper_class = structlog.make_filtering_bound_logger(_LEVELS[level])
    logger_factory = structlog.PrintLoggerFactory(file=out)
    structlog.configure(
        processors=processors,
        wrapper_class=wrapper_class,
        logger_factory=logger_factory,
        cache_logger_on_first_use=False,
    )
    global _installed
    _installed = _Installed(
        processors,
        wrapper_class,
        logger_factory,
        info=_LEVELS[level] <= logging.INFO,
        json_lines=chosen == "json",
    )
    return chosen


class _Installed:
    """The configuration ``configure_logging`` installed, kept to write hot lines through
    its processors directly while it is the configuration in use."""

    __slots__ = (
        "chain",
        "head",
        "info",
        "json_lines",
        "logger_factory",
        "printer",
        "processors",
        "render",
        "wrapper_class",
    )

    def __init__(
        self,
        processors: list[Any],
        wrapper_class: type[Any],
        logger_factory: structlog.PrintLoggerFactory,
        *,
        info: bool,
        json_lines: bool,
    ) -> None:
        self.processors = processors
        self.wrapper_class = wrapper_class
        self.logger_factory = logger_factory
        self.info = info
        self.json_lines = json_lines
        self.chain = tuple(processors)
        self.head = self.chain[:-1]
        self.render = self.chain[-1]
        # The factory makes a new printer per bound logger, each on the same file and lock.
        self.printer = logger_factory()

    def current(self) -> bool:
        """Whether structlog still uses this configuration (a later ``configure`` replaces
        it; a test capturing logs changes the processors in place)."""
        config = structlog.get_config()
        processors = config["processors"]
        return (
            processors is self.processors
            and tuple(processors) == self.chain
            and config["wrapper_class"] is self.wrapper_class
            and config["logger_factory"] is self.logger_factory
            and config["context_class"] is dict
        )

    def write_info(self, event: str, fields: dict[str, Any]) -> None:
        """What an info call of a bound logger does: the event after its fields, the
        processors, the line to the printer."""
        if not self.info:
            return
        fields["event"] = event
        printer = self.printer
        event_dict: Any = fields
        try:
            for processor in self.head:
                event_dict = processor(printer, "info", event_dict)
            line = None
            if self.json_lines:
                try:
                    line = _PLAIN_JSON.encode(event_dict)
                except (TypeError, ValueError):
                    line = None  # a value the renderer's fallback handles
            if line is None:
                line = self.render(printer, "info", event_dict)
        except structlog.DropEvent:
            return
        printer.msg(line)


_installed: _Installed | None = None


class HotLogger:
    """``structlog.get_logger(name)`` for a line written on every request (the access line).

    While the configuration ``configure_logging`` installed is in use, ``info`` runs its
    processors on a printer made once, instead of assembling a bound logger per call, and
    encodes a JSON line of plain values directly: the same bytes, at under half the cost
    (docs/benchmarks.md). Under any other configuration (a test capturing logs, say) it is
    ``get_logger``'s.
    """

    def __init__(self, name: str) -> None:
        self._proxy = structlog.get_logger(name)

    def info(self, event: str, fields: dict[str, Any]) -> None:
        """Log ``event`` at info level with ``fields`` (in order; the dict is used up)."""
        installed = _installed
        if installed is not None and installed.current():
            installed.write_info(event, fields)
        else:
            self._proxy.info(event, **fields)
