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
The pure parts are in `_core`: `bucket`, `pace` (the factor), `refusals` (the doubling
cool-downs), `sharing` (others' use), `surplus` and `charges` (tokens charged per send).
"""

from __future__ import annotations

from typing import Protocol

from ._core.bucket import FULL_BUCKET_MARGIN_SECONDS, Bucket
from ._core.charges import Charges
from ._core.pace import (
    DECREASE_IN_SLOW_START,
    RECOVERY_HALF_LIFE_SECONDS,
    SLOW_START_DOUBLING_SECONDS,
    SLOW_START_FACTOR,
    PaceFactor,
)
from ._core.refusals import Refusals
from ._core.sharing import OthersUse, share_left
from ._core.surplus import Surplus, surplus_beyond
from .headers import RateLimitHeaders

__all__ = [
    "DECREASE_IN_SLOW_START",
    "FULL_BUCKET_MARGIN_SECONDS",
    "RECOVERY_HALF_LIFE_SECONDS",
    "SLOW_START_DOUBLING_SECONDS",
    "SLOW_START_FACTOR",
    "Budget",
    "LimitGroup",
]


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
        self._pace = PaceFactor(now)
        self.requests = Bucket.of(requests_per_min, burst_seconds, now)
        self.tokens = Bucket.of(tokens_per_min, burst_seconds, now)
        self.cooldown_until = 0.0
        self._refusals = Refusals()
        self.in_flight = 0
        self.responses_seen = 0
        self.headers_seen = False  # the server reports x-ratelimit-* headers
        self.sends = 0
        self.tokens_sent = 0.0
        self._charges = Charges()
        self.surplus = Surplus()  # what the server holds beyond our own buckets
        # What others spend of each limit (per second), as last applied to the pace.
        self.others = OthersUse()
        self.shared_requests, self.shared_tokens = self.others.requests, self.others.tokens
        self._others_requests = self._others_tokens = 0.0
        self.budget = budget

    @property
    def factor(self) -> float:
        """The factor its limits are multiplied by (429s lower it, time raises it), as of the
        group's last look at the clock."""
        return self._pace.value

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
            self._pace.start_slowly(now)
        setattr(self, f"limit_{attr}_per_min", limit)
        if getattr(self, attr) is None:
            setattr(self, attr, Bucket(limit, self.burst_seconds, now))
        self._apply_factor()

    def pace_share(self, now: float | None = None) -> float:
        """The share of its limits this group paces at: the factor, less others' use; with
        `now`, as of that time (the factor recovers while the group is idle too)."""
        share = self._pace.value if now is None else self._pace.at(now)
        share = share_left(share, self._others_requests, self.limit_requests_per_min)
        return share_left(share, self._others_tokens, self.limit_tokens_per_min)

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
            if bucket is not None and limit is not None:
                bucket.pace(limit * share, self.burst_seconds)

    def _adapt(self, now: float) -> None:
        """Raise the pace back toward the full limit as time passes; let stale evidence fade."""
        if self._pace.adapt(now):
            self._read_others(now)
            self._apply_factor()

    def on_rate_limited(self, now: float) -> None:
        """A 429 showing an exhausted limit came back: slow down (once per overshoot)."""
        if self._pace.held_off(now):
            return
        self._adapt(now)
        self._pace.decrease(self.pace_share(), now)  # the pace in force, not only the factor
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
            self.others.observe(
                sent,
                (headers.remaining_requests, headers.remaining_tokens),
                (self.requests_per_min, self.tokens_per_min),
                lambda first, last: self._charges.between(first, last, self.sends),
            )
            self._read_others(now)
            self._apply_factor()
        if self.requests is not None and headers.remaining_requests is not None:
            self.requests.observe_remaining(headers.remaining_requests, now)
        if self.tokens is not None and headers.remaining_tokens is not None:
            self.tokens.observe_remaining(headers.remaining_tokens, now)
        if sent is not None and self.surplus.allowed and success:
            self._read_surplus(headers, sent, now)

    def _read_surplus(
        self, headers: RateLimitHeaders, sent: tuple[float, int, float, float], now: float
    ) -> None:
        """What the server holds beyond our buckets, from a successful answer to `sent`."""
        share, rpm, tpm = self.pace_share(), self.limit_requests_per_min, self.limit_tokens_per_min
        levels = [None if b is None else b.level_now(now) for b in (self.requests, self.tokens)]
        since = (self.sends - sent[1], self.tokens_sent - sent[2])
        requests = surplus_beyond(levels[0], rpm, headers.remaining_requests, since[0], share)
        tokens = surplus_beyond(levels[1], tpm, headers.remaining_tokens, since[1], share)
        self.surplus.update(sent[1], requests, tokens, rpm)

    def ready_at(self, tokens: float, now: float) -> float | None:
        """Earliest time a request costing `tokens` may be sent; None while probing is busy."""
        if self.probing and self.in_flight > 0:
            return None
        self._adapt(now)
        t = max(now, self.cooldown_until)
        t = self.surplus.ready_at(self.requests, self.tokens, tokens, t, self.requests_per_min)
        if self.budget is not None:
            t = max(t, self.budget.ready_at(self, tokens, now))
        return t

    def reserve(self, tokens: float, at: float) -> tuple[float, int, float, float]:
        """Deduct one request and `tokens` at time `at` (from `ready_at`).

        Returns what `observe` takes as `sent` for this request's answer.
        """
        rpm = self.limit_requests_per_min
        self.surplus.spend(self.requests, self.tokens, tokens, at, self.sends + 1, rpm)
        if self.budget is not None:
            self.budget.spend(tokens)
        self.in_flight += 1
        self.sends += 1
        self.tokens_sent += tokens
        self._charges.record(self.sends, tokens)
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
        if number is not None:
            self._charges.refund(number, tokens)

    def note_response(self, *, success: bool = False) -> None:
        """A response came back: the group is no longer probing; a success ends a run of
        refusals (see `refused`)."""
        self.responses_seen += 1
        if success:
            self._refusals.succeeded()

    def refused(self, wait: float, sent_at: float, now: float, cap: float) -> float:
        """A 429 showing an exhausted limit came back for a request sent at `sent_at`: cool
        the group down and return for how many seconds.

        `wait` is the server's hint; each round of refusals with no success between doubles it,
        up to `cap` (see `_core.refusals`).
        """
        wait = self._refusals.wait(wait, sent_at, self.cooldown_until, cap)
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
