"""A limit group's pace factor: lowered by 429s that show an exhausted limit, raised by time.

The factor drops at such a 429 (x0.8, once per overshoot), then recovers exponentially (half of
the gap closed every `RECOVERY_HALF_LIFE_SECONDS`), so one burst of 429s costs seconds. A group
whose limits were learned from headers starts at `SLOW_START_FACTOR` and doubles its pace each
second until the first 429 or its full limit.
"""

from __future__ import annotations

import math

__all__ = ["PaceFactor"]

SLOW_START_FACTOR = 0.25
SLOW_START_DOUBLING_SECONDS = 1.0
DECREASE_IN_SLOW_START = 0.5
DECREASE = 0.8
RECOVERY_HALF_LIFE_SECONDS = 3.0
MIN_FACTOR = 0.02
# Several 429s from one overshoot (the requests already in flight) count as one signal.
DECREASE_HOLDOFF_SECONDS = 1.0
# The factor is brought up to date at most this often.
ADAPT_SECONDS = 0.05


class PaceFactor:
    """The factor a group's limits are multiplied by, as of `adapted_at`."""

    __slots__ = ("_decreased_at", "adapted_at", "slow_start", "value")

    def __init__(self, now: float) -> None:
        self.value = 1.0
        self.slow_start = False
        self.adapted_at = now
        self._decreased_at = -math.inf

    def start_slowly(self, now: float) -> None:
        """The group's first limit was learned: start slowly, in case it is shared."""
        self.value = SLOW_START_FACTOR
        self.slow_start = True
        self.adapted_at = now

    def at(self, now: float) -> float:
        """The factor as time raises it back toward 1 by `now` (doubling in slow start)."""
        elapsed = max(0.0, now - self.adapted_at)
        if self.value >= 1.0:
            return 1.0
        if self.slow_start:
            doubled: float = self.value * 2.0 ** (elapsed / SLOW_START_DOUBLING_SECONDS)
            return min(1.0, doubled)
        gap: float = (1.0 - self.value) * 0.5 ** (elapsed / RECOVERY_HALF_LIFE_SECONDS)
        return 1.0 if gap < 0.001 else 1.0 - gap

    def adapt(self, now: float) -> bool:
        """Bring the factor up to date with `now`; False when it was, recently enough."""
        if now - self.adapted_at < ADAPT_SECONDS:
            return False
        self.value = self.at(now)
        self.adapted_at = now
        return True

    def held_off(self, now: float) -> bool:
        """Whether a 429 at `now` belongs to the overshoot that last lowered the factor."""
        return now - self._decreased_at < DECREASE_HOLDOFF_SECONDS

    def decrease(self, in_force: float, now: float) -> None:
        """Lower the factor for a 429 at `now`, from `in_force`: the share of the limits the
        group paced at (others' use may hold it below the factor; cutting the factor alone
        would then change nothing)."""
        decrease = DECREASE_IN_SLOW_START if self.slow_start else DECREASE
        self.value = max(MIN_FACTOR, min(self.value, in_force) * decrease)
        self.slow_start = False
        self._decreased_at = self.adapted_at = now
