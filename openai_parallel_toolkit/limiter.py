"""Rate limiting per limit group: a request bucket and a token bucket, corrected by headers.

A *limit group* is what the server counts against (an OpenAI project), so every key of one
project should share one `LimitGroup`. Each group paces requests with two buckets that refill
continuously at its pace (``limit / 60`` per second at most) and hold a small burst
(``burst_seconds`` of refill).

The pace is the limit, lowered by two things:

- what others spend of it, estimated from the server's ``remaining`` counts (`SharedUse`):
  undeclared keys of one project, a second process on the same keys, another program. Each
  sender paces at ``limit - others``, so several of them converge on sharing the limit;
- a factor that 429s with evidence of exhaustion lower (x0.8, once per overshoot) and time
  raises again (halfway back every few seconds); learned limits start at a quarter and double
  each second. A 429 that shows no exhausted limit (no rate-limit headers from a server that
  sends them, or capacity reported left) is an overload or a gateway's, not ours: it is
  retried elsewhere without slowing the group. A 429 cuts the pace in force, whichever of
  the two holds it down.

A 429 showing exhaustion also cools the group for the server's hint; a cool-down that ends in
another refusal, with no success between, lasts twice as long, so that senders the pool cannot
tell apart do not keep a limit that charges refused requests in debt.

Above the pace: where the server reports more ``remaining`` than a few seconds of refill (a
per-minute window that starts full), that surplus is sent first (`Surplus`), until a 429 shows
the server enforces a shorter window than it reports.

Slots are granted only for "now": `ready_at` says when a request could go, `reserve` takes it
at that moment. Nothing here sleeps or locks: the key pool holds the lock and callers wait.
"""

from __future__ import annotations

import math
from typing import Protocol

from ._core.sharing import SharedUse
from ._core.surplus import Surplus
from .headers import RateLimitHeaders

__all__ = ["Budget", "LimitGroup"]


class Budget(Protocol):
    """A group's share of a budget kept elsewhere (another process's store), spent locally.

    Where a group has one, it decides what others spend of the limits: the group no longer
    estimates that from the headers, and sends only what the budget allows.
    """

    def ready_at(self, group: LimitGroup, tokens: float, now: float) -> float:
        """When a request of `tokens` fits the budget (`now` if it does); may apply what the
        store learned (limits, cool-downs) to `group` first."""
        ...

    def spend(self, tokens: float) -> None:
        """Take one request and `tokens` from the budget."""
        ...

    def refund(self, requests: float, tokens: float) -> None:
        """Give back what a send did not use (negative `tokens`: it used more)."""
        ...

    def cooled(self, seconds: float) -> None:
        """The group was cooled down for `seconds` from now: tell the other senders."""
        ...


# Sends that need a full bucket go this much later than the bucket says: thread wake-ups and
# the network shift arrival times by milliseconds, which a full bucket on the server cannot absorb.
FULL_BUCKET_MARGIN_SECONDS = 0.05


class _Bucket:
    """A continuously refilling bucket: `level` as of `updated`, `rate` per second.

    Slots are only ever taken at "now", so `updated` is never later than the clock.
    """

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, per_minute: float, burst_seconds: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self.updated = now

    def set_limit(self, per_minute: float, burst_seconds: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = min(self.level, self.capacity)

    def _level_at(self, t: float) -> float:
        return min(self.capacity, self.level + self.rate * (t - self.updated))

    def ready_at(self, amount: float, now: float) -> float:
        level = self._level_at(now)
        if amount > self.capacity:
            # A cost above the capacity waits only for a full bucket, never forever; a server
            # admits it when its own bucket is full too, to the millisecond, so leave a margin.
            full_at = self.updated + max(0.0, self.capacity - self.level) / self.rate
            return max(now, full_at + FULL_BUCKET_MARGIN_SECONDS)
        return now if level >= amount else now + (amount - level) / self.rate

    def take(self, amount: float, now: float) -> None:
        self.level = self._level_at(now) - amount
        self.updated = now

    def adjust(self, delta: float, now: float) -> None:
        """Add `delta` (negative: charge) to the level as of `now`."""
        # Date the level to now first, or a later refill from the old date would undo it.
        self.level = min(self.capacity, self._level_at(now) + delta)
        self.updated = now

    def level_now(self, now: float) -> float:
        return self._level_at(now)

    def observe_remaining(self, remaining: float, now: float) -> None:
        # Only ever lower the level: in-flight requests the server has not counted yet make our
        # own view more pessimistic than its, so a lower server figure means traffic we missed.
        excess = self.level_now(now) - remaining
        if excess > 0:
            self.adjust(-excess, now)

    def __repr__(self) -> str:
        return f"<bucket {self.level:.1f}/{self.capacity:.1f} at {self.rate:.3f}/s>"


# Adapting to 429s that show an exhausted limit: the factor drops, then recovers exponentially
# (half of the gap closed every RECOVERY_HALF_LIFE seconds), so one burst of 429s costs
# seconds. A group whose limits were learned from headers starts slowly and doubles its pace
# each second until the first 429 or its full limit.
SLOW_START_FACTOR = 0.25
SLOW_START_DOUBLING_SECONDS = 1.0
DECREASE_IN_SLOW_START = 0.5
DECREASE = 0.8
RECOVERY_HALF_LIFE_SECONDS = 3.0
MIN_FACTOR = 0.02
# Several 429s from one overshoot (the requests already in flight) count as one signal.
DECREASE_HOLDOFF_SECONDS = 1.0
# Sends whose token charges are kept for reading remaining counts (intervals are ~1 s long).
CHARGES_KEPT = 4096
# A server's wait hint assumes no one else retries when it ends. Senders it cannot tell apart
# (undeclared keys of one project, other processes) that all retry on the hint can hold a
# limit that charges refused requests in debt for good: each cool-down in a row that ends in
# another refusal, with no success between, lasts twice as long (up to the caller's cap).
REFUSED_AGAIN_FACTOR = 2.0
# Whatever others seem to spend, a group keeps this share of its limit (evidence can be wrong).
MIN_SHARE = 0.05
# A server's reported surplus is used only when it exceeds this many seconds of the limit: a
# bucket of a second or two is what our pacing already works with.
SURPLUS_MIN_SECONDS = 3.0


class LimitGroup:
    """Request and token pacing for one limit group (one project, or one key by default).

    `requests_per_min` / `tokens_per_min` are the configured limits; None means "learn it from
    the response headers". Until a group with no known limit at all has seen one response,
    it lets a single request through at a time, so the first burst cannot overrun a limit it
    does not know yet.
    """

    def __init__(
        self,
        name: str,
        *,
        requests_per_min: float | None = None,
        tokens_per_min: float | None = None,
        burst_seconds: float = 1.0,
        now: float = 0.0,
        budget: Budget | None = None,
    ) -> None:
        if burst_seconds <= 0:
            raise ValueError("burst_seconds must be > 0")
        self.name = name
        self.burst_seconds = burst_seconds
        self.configured_requests_per_min = requests_per_min
        self.configured_tokens_per_min = tokens_per_min
        # The limits known (configured or learned); the buckets refill at limit x factor.
        self.limit_requests_per_min = requests_per_min
        self.limit_tokens_per_min = tokens_per_min
        self.factor = 1.0
        self._slow_start = False
        self._adapted_at = now
        self._decreased_at = -math.inf
        self.requests: _Bucket | None = (
            _Bucket(requests_per_min, burst_seconds, now) if requests_per_min else None
        )
        self.tokens: _Bucket | None = (
            _Bucket(tokens_per_min, burst_seconds, now) if tokens_per_min else None
        )
        self.cooldown_until = 0.0
        self._refusals = 0  # cool-downs since the last success
        self.in_flight = 0
        self.responses_seen = 0
        self.headers_seen = False  # the server reports x-ratelimit-* headers
        self.sends = 0
        self.tokens_sent = 0.0
        # Tokens charged per recent send (by number): reserved, then settled or refunded.
        self._charges: dict[int, float] = {}
        self.surplus = Surplus()  # what the server holds beyond our own buckets
        # What others spend of each limit (per second), as last applied to the pace.
        self.shared_requests = SharedUse()
        self.shared_tokens = SharedUse()
        self._others_requests = self._others_tokens = 0.0
        self.budget = budget

    # -- limits -------------------------------------------------------------------------------

    @property
    def requests_per_min(self) -> float | None:
        """The request limit in force (configured, or learned from headers)."""
        return self.limit_requests_per_min

    @property
    def tokens_per_min(self) -> float | None:
        """The token limit in force (configured, or learned from headers)."""
        return self.limit_tokens_per_min

    @property
    def probing(self) -> bool:
        """True while no limit is known and no response has been seen yet."""
        return self.requests is None and self.tokens is None and self.responses_seen == 0

    def _learn(self, attr: str, configured: float | None, reported: float, now: float) -> None:
        # A configured limit is trusted unless the server reports a lower one.
        limit = reported if configured is None else min(configured, reported)
        if self.limit_requests_per_min is None and self.limit_tokens_per_min is None:
            # The first limit this group learns: start slowly, in case it is shared.
            self.factor = SLOW_START_FACTOR
            self._slow_start = True
            self._adapted_at = now
        setattr(self, f"limit_{attr}_per_min", limit)
        if getattr(self, attr) is None:
            setattr(self, attr, _Bucket(limit, self.burst_seconds, now))
        self._apply_factor()

    def pace_share(self, now: float | None = None) -> float:
        """The share of its limits this group paces at: the factor, less others' use; with
        `now`, as of that time (the factor recovers while the group is idle too)."""
        share = self.factor if now is None else self._factor_at(now)
        for others, limit in (
            (self._others_requests, self.limit_requests_per_min),
            (self._others_tokens, self.limit_tokens_per_min),
        ):
            if limit and others > 0:
                share = min(share, max(MIN_SHARE, 1.0 - others * 60.0 / limit))
        return share

    def _read_others(self, now: float) -> None:
        if self.budget is not None:
            return  # the budget already holds back what the others spend
        self._others_requests = self.shared_requests.rate(now)
        self._others_tokens = self.shared_tokens.rate(now)

    def _apply_factor(self) -> None:
        share = self.pace_share()
        for bucket, limit in (
            (self.requests, self.limit_requests_per_min),
            (self.tokens, self.limit_tokens_per_min),
        ):
            if (
                bucket is not None
                and limit is not None
                and abs(bucket.rate * 60.0 - limit * share) > 1e-9
            ):
                bucket.set_limit(limit * share, self.burst_seconds)

    def _factor_at(self, now: float) -> float:
        """The factor as time raises it back toward 1 by `now` (doubling in slow start)."""
        elapsed = max(0.0, now - self._adapted_at)
        if self.factor >= 1.0:
            return 1.0
        if self._slow_start:
            doubled: float = self.factor * 2.0 ** (elapsed / SLOW_START_DOUBLING_SECONDS)
            return min(1.0, doubled)
        gap: float = (1.0 - self.factor) * 0.5 ** (elapsed / RECOVERY_HALF_LIFE_SECONDS)
        return 1.0 if gap < 0.001 else 1.0 - gap

    def _adapt(self, now: float) -> None:
        """Raise the pace back toward the full limit as time passes; let stale evidence fade."""
        if now - self._adapted_at < 0.05:
            return
        self.factor = self._factor_at(now)
        self._adapted_at = now
        self._read_others(now)
        self._apply_factor()

    def on_rate_limited(self, now: float) -> None:
        """A 429 showing an exhausted limit came back: slow down (once per overshoot)."""
        if now - self._decreased_at < DECREASE_HOLDOFF_SECONDS:
            return
        self._adapt(now)
        decrease = DECREASE_IN_SLOW_START if self._slow_start else DECREASE
        # Cut the pace in force: where others' use holds the pace below the factor, cutting
        # the factor alone would change nothing.
        self.factor = max(MIN_FACTOR, min(self.factor, self.pace_share()) * decrease)
        self._slow_start = False
        self._decreased_at = self._adapted_at = now
        self._apply_factor()

    def observe(
        self,
        headers: RateLimitHeaders,
        now: float,
        *,
        success: bool = True,
        sent: tuple[float, int, float, float] | None = None,
    ) -> None:
        """Correct limits and levels from one response's ``x-ratelimit-*`` headers.

        `sent` is what `reserve` returned for the request answered (send time, requests and
        tokens sent up to and including it, its tokens), when known: it lets the
        ``remaining`` counts show what others spend of the limits and what the server holds
        beyond our own buckets.
        Only a successful response ends probing: after an error the caller decides first (a
        dead key must be removed before another request can pick it).
        """
        if success:
            self.responses_seen += 1
        if headers.empty:
            return
        self.headers_seen = True
        if headers.limit_requests is not None:
            self._learn("requests", self.configured_requests_per_min, headers.limit_requests, now)
        if headers.limit_tokens is not None:
            self._learn("tokens", self.configured_tokens_per_min, headers.limit_tokens, now)
        if sent is not None and success:  # a refused request's own charge is not known yet
            at, number, _, cost = sent
            if headers.remaining_requests is not None and self.requests_per_min:
                self.shared_requests.observe(
                    at, number, headers.remaining_requests, self.requests_per_min / 60.0, 1.0,
                    lambda a, b: float(b - a),  # refused requests are charged too
                )  # fmt: skip
            if headers.remaining_tokens is not None and self.tokens_per_min:
                self.shared_tokens.observe(
                    at, number, headers.remaining_tokens, self.tokens_per_min / 60.0, cost,
                    self._tokens_charged,
                )  # fmt: skip
            self._read_others(now)
            self._apply_factor()
        if self.requests is not None and headers.remaining_requests is not None:
            self.requests.observe_remaining(headers.remaining_requests, now)
        if self.tokens is not None and headers.remaining_tokens is not None:
            self.tokens.observe_remaining(headers.remaining_tokens, now)
        if sent is not None and self.surplus.allowed and success:
            self.surplus.update(
                sent[1],
                self._surplus(
                    self.requests,
                    self.limit_requests_per_min,
                    headers.remaining_requests,
                    self.sends - sent[1],
                    now,
                ),
                self._surplus(
                    self.tokens,
                    self.limit_tokens_per_min,
                    headers.remaining_tokens,
                    self.tokens_sent - sent[2],
                    now,
                ),
                self.limit_requests_per_min,
            )

    def _tokens_charged(self, first: int, last: int) -> float | None:
        """Tokens charged for our sends numbered first+1 to last (unsettled ones as reserved);
        None when those sends are older than the record kept."""
        if first < self.sends - CHARGES_KEPT:
            return None
        return sum(self._charges.get(number, 0.0) for number in range(first + 1, last + 1))

    def _surplus(
        self,
        bucket: _Bucket | None,
        limit: float | None,
        remaining: float | None,
        sent_since: float,
        now: float,
    ) -> float:
        """What the server holds beyond `bucket`: its `remaining` less our sends since then."""
        if bucket is None or limit is None or remaining is None:
            return 0.0
        usable = remaining - sent_since
        if usable <= SURPLUS_MIN_SECONDS * limit / 60.0:
            return 0.0
        return max(0.0, usable - max(0.0, bucket.level_now(now))) * self.pace_share()

    # -- scheduling ---------------------------------------------------------------------------

    def ready_at(self, tokens: float, now: float) -> float | None:
        """Earliest time a request costing `tokens` may be sent; None while probing is busy."""
        if self.probing and self.in_flight > 0:
            return None
        self._adapt(now)
        t = max(now, self.cooldown_until)
        if self.requests is not None and not self.surplus.covers_request(
            self.limit_requests_per_min
        ):
            t = max(t, self.requests.ready_at(1.0, t))
        if self.tokens is not None and tokens > 0 and self.surplus.tokens < tokens:
            t = max(t, self.tokens.ready_at(tokens, t))
        if self.budget is not None:
            t = max(t, self.budget.ready_at(self, tokens, now))
        return t

    def reserve(self, tokens: float, at: float) -> tuple[float, int, float, float]:
        """Deduct one request and `tokens` at time `at` (from `ready_at`).

        Returns what `observe` takes as `sent` for this request's answer.
        """
        if self.requests is not None:
            if self.requests.level_now(at) < 1.0 and self.surplus.covers_request(
                self.limit_requests_per_min
            ):
                self.surplus.take_request(at, self.sends + 1)
            else:
                self.requests.take(1.0, at)
        if self.tokens is not None and tokens > 0:
            if self.tokens.level_now(at) < tokens and self.surplus.tokens >= tokens:
                self.surplus.take_tokens(tokens, at)
            else:
                self.tokens.take(tokens, at)
        if self.budget is not None:
            self.budget.spend(tokens)
        self.in_flight += 1
        self.sends += 1
        self.tokens_sent += tokens
        self._charges[self.sends] = tokens
        self._charges.pop(self.sends - CHARGES_KEPT, None)
        return (at, self.sends, self.tokens_sent, tokens)

    def release(
        self,
        now: float,
        *,
        refund_request: bool = False,
        tokens: float = 0.0,
        number: int | None = None,
    ) -> None:
        """End a reservation: give back what was not charged (`tokens` > 0) or charge more (< 0).

        `number` is the send's number from `reserve`, so that the refund is known per send.
        """
        self.in_flight = max(0, self.in_flight - 1)
        if refund_request and self.requests is not None:
            self.requests.adjust(1.0, now)
        if self.tokens is not None and tokens:
            self.tokens.adjust(tokens, now)
        if self.budget is not None:
            self.budget.refund(1.0 if refund_request else 0.0, tokens)
        # What the server was charged, as far as we know, for reading its remaining counts.
        self.tokens_sent -= tokens
        if number is not None and number in self._charges:
            self._charges[number] -= tokens

    def note_response(self, *, success: bool = False) -> None:
        """A response came back: the group is no longer probing; a success ends a run of
        refusals (see `refused`)."""
        self.responses_seen += 1
        if success:
            self._refusals = 0

    def refused(self, wait: float, sent_at: float, now: float, cap: float) -> float:
        """A 429 showing an exhausted limit came back for a request sent at `sent_at`: cool
        the group down and return for how many seconds.

        `wait` is the server's hint. A request sent after the last cool-down ended, with no
        success since, shows the hint was not enough: each such round doubles the wait, up to
        `cap`. Requests sent before (the same overshoot) only cool for the hint.
        """
        if sent_at >= self.cooldown_until and self._refusals > 0:
            wait *= REFUSED_AGAIN_FACTOR ** min(self._refusals, 16)
        if sent_at >= self.cooldown_until:
            self._refusals += 1
        wait = min(wait, cap)
        self.cool_down(now + wait, now)
        return wait

    def cool_down(self, until: float, now: float | None = None) -> None:
        """Send nothing on this group before `until` (monotonic seconds); with `now`, the
        cool-down is this group's own finding, passed on to the budget's other senders."""
        self.cooldown_until = max(self.cooldown_until, until)
        if self.budget is not None and now is not None:
            self.budget.cooled(until - now)

    def __repr__(self) -> str:
        return (
            f"<LimitGroup {self.name} rpm={self.requests_per_min} tpm={self.tokens_per_min} "
            f"factor={self.factor:.2f} others={self._others_requests:.2f}/s "
            f"in_flight={self.in_flight} requests={self.requests!r} "
            f"tokens={self.tokens!r} cooldown_until={self.cooldown_until:.3f}>"
        )
