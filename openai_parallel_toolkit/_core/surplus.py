"""What a server holds beyond a group's own pace, and whether it can be trusted to honour it.

Some servers keep a per-minute window that starts full and report the whole minute as
``remaining``. What their count shows beyond our own buckets (less our sends since) is the
surplus: sent before the pace. A trial of one second's worth of the limit comes first; once
every send of the trial was answered without a 429 the surplus is used freely. A 429 whose
headers show capacity left, soon after a send from the surplus, proves the server enforces a
shorter window than it reports: the surplus is not used again, and such 429s count as
exhaustion from then on.
"""

from __future__ import annotations

import math

from .bucket import Bucket

__all__ = ["Surplus", "surplus_beyond"]

# A 429 this soon after sending from the surplus proves a shorter window than reported.
BLAME_SECONDS = 2.0
# Until the trial is answered, send at most this many seconds of the limit from the surplus:
# a server that only reports a long window costs a few 429s, not a storm.
TRIAL_SECONDS = 1.0
# A server's reported surplus is used only when it exceeds this many seconds of the limit: a
# bucket of a second or two is what our pacing already works with.
SURPLUS_MIN_SECONDS = 3.0


class Surplus:
    """One limit group's surplus of requests and tokens, and its trial."""

    __slots__ = (
        "_confirmed",
        "_trial_last",
        "_trial_sent",
        "_used_at",
        "allowed",
        "requests",
        "short_window",
        "tokens",
    )

    def __init__(self) -> None:
        self.allowed = True
        self.short_window = False  # proven: the server enforces less than it reports
        self.requests = 0.0  # as of the server's last answer; never refilled by time
        self.tokens = 0.0
        self._used_at = -math.inf
        self._trial_sent = 0
        self._trial_last = 0  # the number of the trial's last send so far
        self._confirmed = False

    def _open(self, requests_per_min: float | None) -> bool:
        trial = TRIAL_SECONDS * (requests_per_min or 0.0) / 60.0
        return self._confirmed or self._trial_sent < max(1.0, trial)

    def covers_request(self, requests_per_min: float | None) -> bool:
        """Whether the next request may be sent from the surplus."""
        return self.requests >= 1.0 and self._open(requests_per_min)

    def take_request(self, at: float, number: int) -> None:
        """Send request `number` (the group's count) from the surplus at `at`."""
        self.requests -= 1.0
        self._used_at = at
        if not self._confirmed:
            self._trial_sent += 1
            self._trial_last = number

    def take_tokens(self, amount: float, at: float) -> None:
        """Send `amount` tokens from the surplus at `at`."""
        self.tokens -= amount
        self._used_at = at

    def update(
        self, answered: int, requests: float, tokens: float, requests_per_min: float | None
    ) -> None:
        """A successful answer to send `answered`: the surplus its headers show now."""
        if not self._open(requests_per_min) and answered >= self._trial_last:
            self._confirmed = True  # the whole trial was answered without a 429
        self.requests, self.tokens = requests, tokens

    def ready_at(
        self,
        requests: Bucket | None,
        tokens: Bucket | None,
        cost: float,
        t: float,
        requests_per_min: float | None,
    ) -> float:
        """When the buckets let a request of `cost` tokens go, from `t` on: what the surplus
        covers does not wait for its bucket."""
        if requests is not None and not self.covers_request(requests_per_min):
            t = max(t, requests.ready_at(1.0, t))
        if tokens is not None and cost > 0 and self.tokens < cost:
            t = max(t, tokens.ready_at(cost, t))
        return t

    def spend(
        self,
        requests: Bucket | None,
        tokens: Bucket | None,
        cost: float,
        at: float,
        number: int,
        requests_per_min: float | None,
    ) -> None:
        """Take send `number` (one request, `cost` tokens) at `at`: from the surplus where a
        bucket falls short and the surplus covers it, else from the bucket."""
        if requests is not None:
            if requests.level_now(at) < 1.0 and self.covers_request(requests_per_min):
                self.take_request(at, number)
            else:
                requests.take(1.0, at)
        if tokens is not None and cost > 0:
            if tokens.level_now(at) < cost and self.tokens >= cost:
                self.take_tokens(cost, at)
            else:
                tokens.take(cost, at)

    def blame(self, now: float) -> bool:
        """A 429 whose headers show capacity left: True when it is the group's overshoot all
        the same (a shorter window than reported, proven now or before); else an overload's.
        """
        if self.allowed and now - self._used_at <= BLAME_SECONDS:
            self.allowed = False
            self.short_window = True
            self.requests = self.tokens = 0.0
        return self.short_window

    def __repr__(self) -> str:
        return (
            f"<Surplus requests={self.requests:.0f} tokens={self.tokens:.0f} "
            f"allowed={self.allowed} confirmed={self._confirmed}>"
        )


def surplus_beyond(
    level: float | None,
    limit: float | None,
    remaining: float | None,
    sent_since: float,
    share: float,
) -> float:
    """What the server holds beyond a bucket at `level`: its `remaining` less our sends since
    then, when more than `SURPLUS_MIN_SECONDS` of the `limit` (per minute); scaled by the
    `share` of the limit the group paces at. None for `level`: the group has no such bucket."""
    if level is None or limit is None or remaining is None:
        return 0.0
    usable = remaining - sent_since
    if usable <= SURPLUS_MIN_SECONDS * limit / 60.0:
        return 0.0
    return max(0.0, usable - max(0.0, level)) * share
