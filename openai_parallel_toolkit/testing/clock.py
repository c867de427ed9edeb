"""A manual clock for tests of time-dependent logic (limiter, backoff) that must not sleep."""

from __future__ import annotations

import threading

__all__ = ["FakeClock"]


class FakeClock:
    """A `Clock` whose time moves only when told: `sleep(s)` and `advance(s)` add `s` at once.

    `sleeps` records every requested sleep, so tests can assert the waits instead of waiting.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """The clock's time: moved only by `sleep`, `wait` and `advance`."""
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        """Record `seconds` in `sleeps` and move the time on by it, at once."""
        with self._lock:
            self.sleeps.append(seconds)
            if seconds > 0:
                self._now += seconds

    def wait(self, condition: threading.Condition, seconds: float) -> None:
        """Like `sleep`: a timed wait on a condition ends at once, its time having passed."""
        self.sleep(seconds)

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` without recording a sleep."""
        with self._lock:
            self._now += seconds

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now:.3f})"
