"""One logical request's tries: after each failed try, retry now, back off, or give up.

Pure decisions, shared by the threaded engine (`request_openai_api`) and the proxy's asyncio
loop, so both follow one copy of the error table: a wrong request fails at once, a dead key
re-routes at once (the pool removed it), a 429 of an exhausted limit re-routes at once (the pool
cooled that group), a 429 without that evidence and a transient failure back off, each within
its own budget.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from ..errors import Action, Verdict

__all__ = ["Attempts", "Next", "RetryPolicy"]

# The jitter of every policy built without its own `rng`: seeding a generator reads the OS's
# entropy (about 10 µs, a system call), which a policy built per request would pay each time.
# Reseeded in a forked child, as `random` does, so processes do not back off in step.
_SHARED_RNG = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_SHARED_RNG.seed)


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How hard one request tries.

    `max_retries` bounds retries after transient failures (5xx, timeouts, connection errors);
    each waits ``min(backoff_max, backoff_base * 2**n)`` scaled by a random factor in [0.5, 1].
    `max_rate_limited` bounds re-routes after 429s: those of an exhausted limit go to another
    key at once (the pool cools the group down); the others (an overload's) go to another key
    at once the first time, then back off like transient failures.
    Removed keys do not count: the pool runs out of keys first.
    """

    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    max_rate_limited: int = 50
    rng: random.Random = field(default_factory=lambda: _SHARED_RNG, compare=False, repr=False)

    def backoff(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait before the retry after `failures` transient failures."""
        wait = min(self.backoff_max, self.backoff_base * 2.0 ** (failures - 1))
        wait *= 0.5 + 0.5 * self.rng.random()
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.backoff_max))
        return wait


@dataclass(frozen=True, slots=True)
class Next:
    """What to do after a failed try: give up (`give_up` says why), or wait `wait` s and retry."""

    give_up: str | None = None
    wait: float = 0.0


class Attempts:
    """The failed tries of one logical request, counted against `policy`."""

    __slots__ = ("policy", "rate_limited", "transient", "tries")

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.tries = self.transient = self.rate_limited = 0

    def after(self, verdict: Verdict) -> Next:
        """The decision after a try that ended in `verdict` (already acted on by the pool)."""
        self.tries += 1
        action = verdict.action
        if action is Action.FATAL:
            return Next(give_up="request failed")
        if action is Action.KEY_DEAD:
            return Next()
        if action is Action.RATE_LIMITED:
            self.rate_limited += 1
            if self.rate_limited > self.policy.max_rate_limited:
                return Next(give_up=f"still rate limited after {self.rate_limited} tries")
            if verdict.exhausted or self.rate_limited == 1:
                return Next()
            # Repeated 429s of an overload: the group was not slowed, so this request backs off.
            return Next(wait=self.policy.backoff(self.rate_limited - 1))
        self.transient += 1
        if self.transient > self.policy.max_retries:
            return Next(give_up=f"gave up after {self.tries} attempts")
        return Next(wait=self.policy.backoff(self.transient, verdict.retry_after))

    def __repr__(self) -> str:
        return (
            f"<Attempts tries={self.tries} transient={self.transient} "
            f"rate_limited={self.rate_limited}>"
        )
