"""The retry decision both engines share: one copy of the error table, no I/O."""

from __future__ import annotations

import random

from openai_parallel_toolkit import Action, RetryPolicy, Verdict
from openai_parallel_toolkit._core.attempt import Attempts

POLICY = RetryPolicy(max_retries=2, max_rate_limited=3, rng=random.Random(0))


def verdict(
    action: Action, *, exhausted: bool | None = None, retry_after: float | None = None
) -> Verdict:
    return Verdict(action, "why", 429, retry_after, None, exhausted)


def test_a_wrong_request_gives_up_at_once_and_a_dead_key_reroutes_at_once() -> None:
    attempts = Attempts(POLICY)
    assert attempts.after(verdict(Action.KEY_DEAD)).give_up is None
    assert attempts.after(verdict(Action.KEY_DEAD)).wait == 0.0
    assert attempts.after(verdict(Action.FATAL)).give_up == "request failed"


def test_429s_reroute_at_once_when_exhausted_and_back_off_otherwise() -> None:
    attempts = Attempts(POLICY)
    first = attempts.after(verdict(Action.RATE_LIMITED, exhausted=False))
    assert first.give_up is None and first.wait == 0.0  # the first goes elsewhere at once
    second = attempts.after(verdict(Action.RATE_LIMITED, exhausted=False))
    assert second.give_up is None and 0.0 < second.wait <= POLICY.backoff_max
    attempts.after(verdict(Action.RATE_LIMITED, exhausted=True))
    last = attempts.after(verdict(Action.RATE_LIMITED, exhausted=True))
    assert last.give_up == "still rate limited after 4 tries"


def test_transient_failures_back_off_within_their_budget() -> None:
    attempts = Attempts(POLICY)
    first = attempts.after(verdict(Action.TRANSIENT, retry_after=3.0))
    assert first.wait == 3.0  # the server's retry-after, within backoff_max
    second = attempts.after(verdict(Action.TRANSIENT))
    assert 0.5 <= second.wait <= 1.0  # backoff_base x 2, scaled by [0.5, 1]
    assert attempts.after(verdict(Action.TRANSIENT)).give_up == "gave up after 3 attempts"
