"""A simulated server and senders on a `FakeClock`: the pool's pacing without sockets or sleeps.

Tests of sharing detection, 429 handling and convergence drive real `APIKeyManager` pools
against `SimulatedServer`, one event at a time; simulated minutes take milliseconds and every
run is repeatable (seeded). Request limits and token limits (a fixed cost per request) are
simulated; 429s count against the request limit, as OpenAI counts them.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import Action, classify_response
from ..keys import APIKeyManager, Lease
from .clock import FakeClock

__all__ = ["Project", "SenderStats", "SimulatedServer", "simulate"]


@dataclass
class _Window:
    """One limit's bucket: `capacity_seconds` of refill; `remaining` may be reported as if
    it held `report_seconds` (a server that says a minute is left while enforcing less)."""

    per_minute: float
    capacity_seconds: float
    report_seconds: float | None
    level: float = math.nan
    updated: float = 0.0

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate * self.capacity_seconds)

    def refill(self, now: float) -> None:
        if math.isnan(self.level):
            self.level, self.updated = self.capacity, now
        self.level = min(self.capacity, self.level + self.rate * (now - self.updated))
        self.updated = now

    def remaining(self) -> int:
        level = max(0.0, self.level)
        if self.report_seconds is not None:
            level += self.rate * (self.report_seconds - self.capacity_seconds)
        return math.floor(max(0.0, level))

    def reset(self) -> str:
        return f"{max(0.0, 1.0 - self.level) / self.rate:.3f}s"


class Project:
    """One project's limits on the server: requests and, optionally, tokens per minute.

    Each is a bucket of `capacity_seconds` of refill, full at the start; `report_seconds`
    reports ``remaining`` as if the buckets held that many seconds (default: the truth).
    """

    def __init__(
        self,
        requests_per_min: float,
        *,
        tokens_per_min: float | None = None,
        capacity_seconds: float = 1.0,
        report_seconds: float | None = None,
    ) -> None:
        self.requests = _Window(requests_per_min, capacity_seconds, report_seconds)
        self.tokens = (
            _Window(tokens_per_min, capacity_seconds, report_seconds) if tokens_per_min else None
        )

    def admit(self, cost: int, now: float, charge_rejected: bool) -> str | None:
        """Take one request and `cost` tokens; else the limit that refused ("requests" or
        "tokens"), the request charged all the same if told."""
        self.requests.refill(now)
        if self.tokens is not None:
            self.tokens.refill(now)
        refused = None
        if self.requests.level < 1.0:
            refused = "requests"
        elif self.tokens is not None and self.tokens.level < min(cost, self.tokens.capacity):
            refused = "tokens"
        if refused is None or charge_rejected:
            self.requests.level -= 1.0
        if refused is None and self.tokens is not None:
            self.tokens.level -= cost
        return refused

    def headers(self) -> dict[str, str]:
        out = {}
        for name, window in (("requests", self.requests), ("tokens", self.tokens)):
            if window is not None:
                out[f"x-ratelimit-limit-{name}"] = f"{window.per_minute:g}"
                out[f"x-ratelimit-remaining-{name}"] = str(window.remaining())
                out[f"x-ratelimit-reset-{name}"] = window.reset()
        return out


class SimulatedServer:
    """Keys mapped to projects; admits or answers 429 with OpenAI's rate-limit headers.

    `charge_rejected`: a 429 still spends one request, as OpenAI counts it. `chaos_429`: this
    share of requests gets a 429 that carries no rate-limit headers (an overloaded gateway).
    """

    def __init__(
        self,
        projects: Mapping[str, Project],
        key_projects: Mapping[str, str],
        *,
        charge_rejected: bool = True,
        chaos_429: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.projects = dict(projects)
        self.key_projects = dict(key_projects)
        self.charge_rejected = charge_rejected
        self.chaos_429 = chaos_429
        self.rng = random.Random(seed)
        self.admitted: dict[str, int] = dict.fromkeys(self.projects, 0)
        self.tokens: dict[str, int] = dict.fromkeys(self.projects, 0)
        self.rejected: dict[str, int] = dict.fromkeys(self.projects, 0)
        self.chaos = 0

    def send(
        self, key: str, now: float, cost: int = 0
    ) -> tuple[int, dict[str, str], dict[str, object]]:
        """One request of `cost` tokens arriving at `now`: (status, headers, body)."""
        if self.chaos_429 and self.rng.random() < self.chaos_429:
            self.chaos += 1
            return 429, {"retry-after": "1"}, _error_body("requests")
        name = self.key_projects[key]
        project = self.projects[name]
        refused = project.admit(cost, now, self.charge_rejected)
        if refused is None:
            self.admitted[name] += 1
            self.tokens[name] += cost
            return 200, project.headers(), {}
        self.rejected[name] += 1
        return 429, project.headers(), _error_body(refused)


@dataclass
class SenderStats:
    """What one pool got in a simulation."""

    successes: int = 0
    rate_limited: int = 0


def _error_body(limit: str) -> dict[str, object]:
    return {"error": {"message": "Rate limit reached", "type": limit, "code": None}}


def simulate(
    clock: FakeClock,
    server: SimulatedServer,
    pools: Sequence[tuple[APIKeyManager, int]],
    duration: float,
    *,
    latency: Callable[[random.Random], float] = lambda rng: rng.uniform(0.1, 0.3),
    cost: int = 0,
    seed: int = 1,
) -> list[SenderStats]:
    """Run `pools` (each with its count of concurrent senders) for `duration` simulated seconds.

    Each sender takes a slot from its pool for a request of `cost` tokens, sends, and hands the
    answer back (headers, then success or the classified 429), one event at a time in time
    order.
    """
    rng = random.Random(seed)
    events: list[tuple[float, int, Callable[[], None]]] = []
    order = itertools.count()
    end = clock.monotonic() + duration
    stats = [SenderStats() for _ in pools]

    def at(when: float, action: Callable[[], None]) -> None:
        heapq.heappush(events, (when, next(order), action))

    def sender(pool: APIKeyManager, mine: SenderStats) -> Callable[[], None]:
        def take() -> None:
            now = clock.monotonic()
            if now >= end:
                return
            lease = pool.try_acquire(cost)
            if not isinstance(lease, Lease):
                at(now + max(lease, 1e-3), take)
                return
            status, headers, body = server.send(lease.key_config.api_key, now, cost)
            at(now + latency(rng), lambda: answer(lease, status, headers, body))

        def answer(
            lease: Lease, status: int, headers: dict[str, str], body: dict[str, object]
        ) -> None:
            lease.observe_headers(headers, success=status < 400)
            if status < 400:
                mine.successes += 1
                lease.succeed()
                take()
                return
            mine.rate_limited += 1
            verdict = lease.fail(classify_response(status, body, headers))
            backoff = 0.0 if verdict.action is Action.RATE_LIMITED and verdict.exhausted else 0.5
            at(clock.monotonic() + backoff, take)

        return take

    for (pool, count), mine in zip(pools, stats, strict=True):
        for _ in range(count):
            at(clock.monotonic() + rng.uniform(0.0, 0.01), sender(pool, mine))
    while events:
        when, _, action = heapq.heappop(events)
        if when > end + 60.0:
            break
        clock.advance(max(0.0, when - clock.monotonic()))
        action()
    return stats
