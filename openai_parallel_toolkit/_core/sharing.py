"""How fast others spend a limit group's limits, read from the server's ``remaining`` counts.

One estimate per limit (requests, tokens). A group's limit may be spent by senders the pool
cannot see: keys of the same project
not declared as one group, another process on the same keys, another program. The server's
``x-ratelimit-remaining-requests`` tells. Between two of our requests a and b (ordered by when
we sent them), the server's count moves by its refill, minus our own sends in between, minus
what others sent::

    others = remaining_a + rate * (t_b - t_a) - ours(a, b) - remaining_b

where ``ours(a, b)`` is what the server charged us for our requests sent after a, up to and
including b (requests; or tokens, where refused requests are charged none).

Only intervals that start and end with the server's bucket short of full (before the request
at either end took its share) count, since a full bucket throws refill away and would look like
someone else's use. The samples are averaged
over a few seconds (an exponential moving average, quicker to follow a fall than a rise);
without new evidence the estimate fades, so a wrong conclusion is undone. A coincidence of
429s is never taken for sharing.

The pacing that follows is ``limit - others`` per group: two senders that each see the other
converge on sharing the limit, whatever split they settle on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OthersUse", "SharedUse", "share_left"]

# Intervals shorter than this are too noisy (arrival order and delay, rounding of `remaining`).
MIN_INTERVAL_SECONDS = 0.5
# Averaging time constant: long enough to damp the feedback between senders that each react
# to the others (stable up to ~40 senders on one limit), short enough to follow a change.
AVERAGE_SECONDS = 5.0
# When others spend less than thought, follow sooner: that capacity is ours to use.
FALLING_AVERAGE_SECONDS = 2.0
# Servers hold at least this many seconds of refill (OpenAI: a minute): a floor for the
# bucket's size before a full one has been seen.
MIN_CAPACITY_SECONDS = 1.0
# Without a new sample for this long, the estimate fades with the same time constant.
STALE_SECONDS = 2.0
# Whatever others seem to spend, a group keeps this share of its limit (evidence can be wrong).
MIN_SHARE = 0.05


def share_left(share: float, others: float, limit: float | None) -> float:
    """`share` of a limit (per minute), lowered to what `others` (per second) leave of it."""
    if limit and others > 0:
        return min(share, max(MIN_SHARE, 1.0 - others * 60.0 / limit))
    return share


@dataclass(frozen=True, slots=True)
class _Mark:
    sent_at: float
    number: int  # the group's count of sends, this one included
    remaining: float
    before: float  # the server's count before this request took its cost


class SharedUse:
    """Estimates how much per second others spend of one limit of a group."""

    __slots__ = ("_anchor", "_capacity", "_rate", "_samples", "_updated")

    def __init__(self) -> None:
        self._anchor: _Mark | None = None
        self._capacity = 0.0  # the largest `remaining` seen: a floor for the server's bucket
        self._rate = 0.0
        self._samples = 0
        self._updated = -math.inf

    def observe(
        self,
        sent_at: float,
        number: int,
        remaining: float,
        limit_rate: float,
        cost: float,
        ours: Callable[[int, int], float | None],
    ) -> None:
        """The answer to our `number`-th request of the group, of `cost`, sent at `sent_at`.

        `remaining` is the server's count after that request; `limit_rate` the group's limit
        per second; ``ours(a, b)`` what we were charged for our requests a+1 to b (None:
        not known any more, and the interval is skipped).
        """
        mark = _Mark(sent_at, number, remaining, remaining + cost)
        self._capacity = max(self._capacity, mark.before)
        anchor = self._anchor
        if anchor is None or sent_at <= anchor.sent_at:
            if anchor is None:
                self._anchor = mark
            return  # an older response arriving late: its interval is already covered
        elapsed = sent_at - anchor.sent_at
        if elapsed < MIN_INTERVAL_SECONDS:
            return
        self._anchor = mark
        capacity = max(self._capacity, limit_rate * MIN_CAPACITY_SECONDS)
        near_full = capacity - max(1.0, 0.05 * capacity)
        if max(anchor.before, mark.before) >= near_full:
            return  # the server's bucket may have been full: refill was lost, not used
        spent = ours(anchor.number, number)
        if spent is None:
            return
        others = anchor.remaining + limit_rate * elapsed - spent - remaining
        self._average(others / elapsed, elapsed, sent_at)

    def _average(self, sample: float, elapsed: float, now: float) -> None:
        current = self.rate(now)
        # Close to a plain mean over the first samples (right within seconds of the first
        # evidence), with a prior of no sharing so that one noisy sample cannot decide.
        self._samples += 1
        constant = FALLING_AVERAGE_SECONDS if sample < current else AVERAGE_SECONDS
        weight = max(1.0 - math.exp(-elapsed / constant), 1.0 / (self._samples + 1))
        self._rate = max(0.0, current + weight * (sample - current))
        self._updated = now

    def rate(self, now: float) -> float:
        """Others' requests per second as of `now` (fading once the evidence stops)."""
        idle = now - self._updated - STALE_SECONDS
        if idle <= 0:
            return self._rate
        return self._rate * math.exp(-idle / AVERAGE_SECONDS)

    def __repr__(self) -> str:
        return f"<SharedUse {self._rate:.2f}/s capacity>={self._capacity:.0f}>"


class OthersUse:
    """What others spend of one group's request and token limits."""

    __slots__ = ("requests", "tokens")

    def __init__(self) -> None:
        self.requests = SharedUse()
        self.tokens = SharedUse()

    def observe(
        self,
        sent: tuple[float, int, float, float],
        remaining: tuple[float | None, float | None],
        per_min: tuple[float | None, float | None],
        ours: Callable[[int, int], float | None],
    ) -> None:
        """A successful answer to `sent` (the group's send record: time, number, tokens sent
        so far, its tokens) with the server's `remaining` (requests, tokens), the limits
        `per_min` in force; ``ours(a, b)``: the tokens we were charged for sends a+1 to b."""
        at, number, _, cost = sent
        if remaining[0] is not None and per_min[0]:
            self.requests.observe(
                at, number, remaining[0], per_min[0] / 60.0, 1.0,
                lambda a, b: float(b - a),  # refused requests are charged too
            )  # fmt: skip
        if remaining[1] is not None and per_min[1]:
            self.tokens.observe(at, number, remaining[1], per_min[1] / 60.0, cost, ours)
