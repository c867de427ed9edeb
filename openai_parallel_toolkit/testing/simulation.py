"""A simulated server and senders on a `FakeClock`: the pool's pacing without sockets or sleeps.

Tests of sharing detection, 429 handling and convergence drive real `APIKeyManager` pools
against `SimulatedServer`, one event at a time; simulated minutes take milliseconds and every
run is repeatable (seeded). Only request limits are simulated.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import Action, classify_response
from ..keys import APIKeyManager, Lease
from .clock import FakeClock

__all__ = ["Project", "SenderStats", "SimulatedServer", "simulate"]


@dataclass
class Project:
    """One request limit on the server: a bucket of `capacity_seconds` of refill.

    `report_seconds` reports ``remaining`` as if the bucket held that many seconds (a server
    that says a whole minute is left while it enforces a shorter window); default: the truth.
    """

    requests_per_min: float
    capacity_seconds: float = 1.0
    report_seconds: float | None = None
    level: float = field(default=math.nan)
    updated: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests_per_min / 60.0

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
        self.rejected: dict[str, int] = dict.fromkeys(self.projects, 0)
        self.chaos = 0

    def send(self, key: str, now: float) -> tuple[int, dict[str, str]]:
        """One request arriving at `now`: (status, headers)."""
        if self.chaos_429 and self.rng.random() < self.chaos_429:
            self.chaos += 1
            return 429, {"retry-after": "1"}
        name = self.key_projects[key]
        project = self.projects[name]
        project.refill(now)
        admitted = project.level >= 1.0
        if admitted or self.charge_rejected:
            project.level -= 1.0
        if admitted:
            self.admitted[name] += 1
        else:
            self.rejected[name] += 1
        headers = {
            "x-ratelimit-limit-requests": f"{project.requests_per_min:g}",
            "x-ratelimit-remaining-requests": str(project.remaining()),
            "x-ratelimit-reset-requests": f"{max(0.0, 1.0 - project.level) / project.rate:.3f}s",
        }
        return (200 if admitted else 429), headers


@dataclass
class SenderStats:
    """What one pool got in a simulation."""

    successes: int = 0
    rate_limited: int = 0


_BODY_429 = {"error": {"message": "Rate limit reached", "type": "requests", "code": None}}


def simulate(
    clock: FakeClock,
    server: SimulatedServer,
    pools: Sequence[tuple[APIKeyManager, int]],
    duration: float,
    *,
    latency: Callable[[random.Random], float] = lambda rng: rng.uniform(0.1, 0.3),
    seed: int = 1,
) -> list[SenderStats]:
    """Run `pools` (each with its count of concurrent senders) for `duration` simulated seconds.

    Each sender takes a slot from its pool, sends, and hands the answer back (headers, then
    success or the classified 429), one event at a time in time order.
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
            lease = pool.try_acquire()
            if not isinstance(lease, Lease):
                at(now + max(lease, 1e-3), take)
                return
            status, headers = server.send(lease.key_config.api_key, now)
            at(now + latency(rng), lambda: answer(lease, status, headers))

        def answer(lease: Lease, status: int, headers: dict[str, str]) -> None:
            lease.observe_headers(headers, success=status < 400)
            if status < 400:
                mine.successes += 1
                lease.succeed()
                take()
                return
            mine.rate_limited += 1
            verdict = lease.fail(classify_response(status, _BODY_429, headers))
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
