"""Time source of the limiter and the request engine, injectable so tests never sleep."""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What the toolkit needs of time: a monotonic reading in seconds, and a way to wait."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, never going back."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` (nothing for 0 or less)."""
        ...

    def wait(self, condition: threading.Condition, seconds: float) -> None:
        """Wait on `condition` (whose lock is held) for at most `seconds`."""
        ...


class SystemClock:
    """The real clock: `time.monotonic` and `time.sleep`."""

    def monotonic(self) -> float:
        """`time.monotonic()`."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """`time.sleep(seconds)` for a positive `seconds`."""
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, condition: threading.Condition, seconds: float) -> None:
        """`condition.wait(seconds)`: woken early by a notify."""
        condition.wait(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"
