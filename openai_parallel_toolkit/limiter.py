"""Rate limiting per limit group: a request bucket and a token bucket, corrected by headers.

A *limit group* is what the server counts against (an OpenAI project), so every key of one
project must share one `LimitGroup`. Each group paces requests with two buckets that refill
continuously at ``limit / 60`` per second and hold a small burst (``burst_seconds`` of refill).

Reservations are made up front: `LimitGroup.reserve` returns the moment the request may be
sent, possibly in the future, and deducts its cost at that moment. Later reservations queue
behind earlier ones, so concurrent callers get evenly spaced send times instead of racing for
each refill. Nothing here sleeps or locks: the key pool holds the lock and callers wait.
"""

from __future__ import annotations

import math

from .headers import RateLimitHeaders

__all__ = ["LimitGroup"]


# Sends that need a full bucket go this much later than the bucket says: thread wake-ups and
# the network shift arrival times by milliseconds, which a full bucket on the server cannot absorb.
FULL_BUCKET_MARGIN_SECONDS = 0.05


class _Bucket:
    """A continuously refilling bucket whose level may be dated in the future (queued sends)."""

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
        base = max(now, self.updated)
        level = self._level_at(base)
        if amount > self.capacity:
            # A cost above the capacity waits only for a full bucket, never forever; a server
            # admits it when its own bucket is full too, to the millisecond, so leave a margin.
            full_at = self.updated + max(0.0, self.capacity - self.level) / self.rate
            return max(base, full_at + FULL_BUCKET_MARGIN_SECONDS)
        return base if level >= amount else base + (amount - level) / self.rate

    def take(self, amount: float, at: float) -> None:
        at = max(at, self.updated)
        self.level = self._level_at(at) - amount
        self.updated = at

    def adjust(self, delta: float, now: float) -> None:
        """Add `delta` (negative: charge) to the level as of `now`."""
        if self.updated <= now:
            # Date the level to now first, or a later refill from the old date would undo it.
            self.level = self._level_at(now)
            self.updated = now
        self.level = min(self.capacity, self.level + delta)

    def level_now(self, now: float) -> float:
        if self.updated > now:  # queued sends: what the level is now, before they happen
            return self.level - self.rate * (self.updated - now)
        return self._level_at(now)

    def observe_remaining(self, remaining: float, now: float) -> None:
        # Only ever lower the level: in-flight requests the server has not counted yet make our
        # own view more pessimistic than its, so a lower server figure means traffic we missed.
        excess = self.level_now(now) - remaining
        if excess > 0:
            self.adjust(-excess, now)

    def __repr__(self) -> str:
        return f"<bucket {self.level:.1f}/{self.capacity:.1f} at {self.rate:.3f}/s>"


# Adapting to 429s (additive increase, multiplicative decrease): a 429 is the only sign that
# the limit is shared with traffic the pool cannot see (keys of one project not declared as a
# limit_group, another program on the same key). A group whose limits were learned from headers
# starts slowly and doubles its pace each second until the first 429 or its full limit.
SLOW_START_FACTOR = 0.25
SLOW_START_DOUBLING_SECONDS = 1.0
DECREASE_IN_SLOW_START = 0.5
DECREASE = 0.8
ADDITIVE_INCREASE_PER_SECOND = 0.01
MIN_FACTOR = 0.02
# Several 429s from one overshoot (the requests already in flight) count as one signal.
DECREASE_HOLDOFF_SECONDS = 1.0


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
        self.in_flight = 0
        self.responses_seen = 0

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
        bucket: _Bucket | None = getattr(self, attr)
        if bucket is None:
            setattr(self, attr, _Bucket(limit * self.factor, self.burst_seconds, now))
        elif abs(bucket.rate * 60.0 - limit * self.factor) > 1e-9:
            bucket.set_limit(limit * self.factor, self.burst_seconds)

    def _apply_factor(self) -> None:
        for bucket, limit in (
            (self.requests, self.limit_requests_per_min),
            (self.tokens, self.limit_tokens_per_min),
        ):
            if bucket is not None and limit is not None:
                bucket.set_limit(limit * self.factor, self.burst_seconds)

    def _adapt(self, now: float) -> None:
        """Raise the pace back toward the full limit as time passes without 429s."""
        elapsed = now - self._adapted_at
        if self.factor >= 1.0 or elapsed < 0.05:
            return
        self._adapted_at = now
        if self._slow_start:
            self.factor *= 2.0 ** (elapsed / SLOW_START_DOUBLING_SECONDS)
        else:
            self.factor += ADDITIVE_INCREASE_PER_SECOND * elapsed
        self.factor = min(1.0, self.factor)
        self._apply_factor()

    def restart_slowly(self, now: float) -> None:
        """Pace from a quarter of the limit again, doubling each second (after a merge)."""
        self.factor = SLOW_START_FACTOR
        self._slow_start = True
        self._adapted_at = self._decreased_at = now
        self._apply_factor()

    def on_rate_limited(self, now: float) -> None:
        """A 429 came back: slow this group's pace down (once per overshoot)."""
        if now - self._decreased_at < DECREASE_HOLDOFF_SECONDS:
            return
        self._adapt(now)
        decrease = DECREASE_IN_SLOW_START if self._slow_start else DECREASE
        self.factor = max(MIN_FACTOR, self.factor * decrease)
        self._slow_start = False
        self._decreased_at = self._adapted_at = now
        self._apply_factor()

    def observe(self, headers: RateLimitHeaders, now: float, *, success: bool = True) -> None:
        """Correct limits and levels from one response's ``x-ratelimit-*`` headers.

        Only a successful response ends probing: after an error the caller decides first
        (a dead key must be removed before another request can pick it).
        """
        if success:
            self.responses_seen += 1
        if headers.empty:
            return
        if headers.limit_requests is not None:
            self._learn("requests", self.configured_requests_per_min, headers.limit_requests, now)
        if headers.limit_tokens is not None:
            self._learn("tokens", self.configured_tokens_per_min, headers.limit_tokens, now)
        if self.requests is not None and headers.remaining_requests is not None:
            self.requests.observe_remaining(headers.remaining_requests, now)
        if self.tokens is not None and headers.remaining_tokens is not None:
            self.tokens.observe_remaining(headers.remaining_tokens, now)

    # -- scheduling ---------------------------------------------------------------------------

    def ready_at(self, tokens: float, now: float) -> float | None:
        """Earliest time a request costing `tokens` may be sent; None while probing is busy."""
        if self.probing and self.in_flight > 0:
            return None
        self._adapt(now)
        t = max(now, self.cooldown_until)
        if self.requests is not None:
            t = max(t, self.requests.ready_at(1.0, t))
        if self.tokens is not None and tokens > 0:
            t = max(t, self.tokens.ready_at(tokens, t))
        return t

    def reserve(self, tokens: float, at: float) -> None:
        """Deduct one request and `tokens` at time `at` (from `ready_at`)."""
        if self.requests is not None:
            self.requests.take(1.0, at)
        if self.tokens is not None and tokens > 0:
            self.tokens.take(tokens, at)
        self.in_flight += 1

    def release(self, now: float, *, refund_request: bool = False, tokens: float = 0.0) -> None:
        """End a reservation: give back what was not charged (`tokens` > 0) or charge more (< 0)."""
        self.in_flight = max(0, self.in_flight - 1)
        if refund_request and self.requests is not None:
            self.requests.adjust(1.0, now)
        if self.tokens is not None and tokens:
            self.tokens.adjust(tokens, now)

    def cool_down(self, until: float) -> None:
        """Send nothing on this group before `until` (monotonic seconds)."""
        self.cooldown_until = max(self.cooldown_until, until)

    def __repr__(self) -> str:
        return (
            f"<LimitGroup {self.name} rpm={self.requests_per_min} tpm={self.tokens_per_min} "
            f"factor={self.factor:.2f} in_flight={self.in_flight} requests={self.requests!r} "
            f"tokens={self.tokens!r} cooldown_until={self.cooldown_until:.3f}>"
        )
