"""How long a limit group cools down after a 429 that shows an exhausted limit.

A server's wait hint assumes no one else retries when it ends. Senders it cannot tell apart
(undeclared keys of one project, other processes) that all retry on the hint can hold a limit
that charges refused requests in debt for good: each cool-down in a row that ends in another
refusal, with no success between, lasts `REFUSED_AGAIN_FACTOR` times as long (up to a cap).
"""

from __future__ import annotations

__all__ = ["Refusals"]

REFUSED_AGAIN_FACTOR = 2.0
_MAX_DOUBLINGS = 16


class Refusals:
    """The cool-downs of one group since its last success."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def wait(self, hint: float, sent_at: float, cooled_until: float, cap: float) -> float:
        """Seconds to cool for a refusal of a request sent at `sent_at`, the server's `hint`
        given, when the group was cooled until `cooled_until`.

        A request sent after the last cool-down ended shows the hint was not enough: each such
        round multiplies the wait, up to `cap`. Requests sent before (the same overshoot) only
        cool for the hint.
        """
        after = sent_at >= cooled_until
        if after and self.count > 0:
            hint *= REFUSED_AGAIN_FACTOR ** min(self.count, _MAX_DOUBLINGS)
        if after:
            self.count += 1
        return min(hint, cap)

    def succeeded(self) -> None:
        """A success ends the run of refusals."""
        self.count = 0
