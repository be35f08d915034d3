"""Back ends that turn a RunRequest into RunEvents."""

from ccgate.runners.base import (
    RunError,
    RunEvent,
    RunRequest,
    RunResult,
    RunStarted,
    TextDelta,
    collect,
)
from ccgate.runners.base import Runner as Runner

__all__ = [
    "RunError",
    "RunEvent",
    "RunRequest",
    "RunResult",
    "RunStarted",
    "Runner",
    "TextDelta",
    "collect",
]
