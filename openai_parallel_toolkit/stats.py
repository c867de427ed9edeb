"""Frozen snapshots of a key pool: per key, per pool, and its capacity now."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from .prices import usd

__all__ = [
    "KeyState",
    "KeyStats",
    "PoolCapacity",
    "PoolStats",
    "UsageReport",
    "UsageRow",
    "request_figures",
]


class KeyState(str, enum.Enum):
    """Health of a key in the pool."""

    ACTIVE = "active"
    COOLING_DOWN = "cooling_down"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class KeyStats:
    """A snapshot of one key (masked) and its counters.

    `pace_share` is the share of the group's limit it paces at now (1.0: all of it); it is
    lower after 429s, while a learned limit starts up, and by `others_per_min` /
    `others_tokens_per_min`: the requests and tokens per minute others spend of the limits
    (other keys of the project, other processes, other programs), as the server's
    ``remaining`` counts show. `surplus_requests` is what the server says it holds beyond
    the group's own pace (a per-minute window that starts full), sent before the pace;
    `surplus_allowed` turns False for good once the server proved it enforces a shorter
    window than its counts report (a 429 while they showed capacity left).
    """

    key: str
    group: str
    state: KeyState
    cooldown_remaining: float
    removed_reason: str | None
    requests: int
    successes: int
    rate_limited: int
    errors: int
    tokens: int
    in_flight: int
    requests_per_min: float | None
    tokens_per_min: float | None
    pace_share: float = 1.0
    others_per_min: float = 0.0
    others_tokens_per_min: float = 0.0
    surplus_requests: float = 0.0
    surplus_allowed: bool = True
    prompt_tokens: int = 0  # of answered requests, cached ones included
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: float | None = 0.0  # USD; None when some answer's price is unknown
    remaining_requests: float | None = None  # what the group may send now (None: no limit known)
    remaining_tokens: float | None = None


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Tokens and cost (USD; None: unknown) of the answered requests of one model or key."""

    name: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: float | None = 0.0

    def to_dict(self) -> dict[str, int | float | None]:
        """The row as JSON-ready numbers: requests, input/output/cached tokens, cost (USD or
        None when unknown); the name is the key it is filed under in `UsageReport.to_dict`."""
        return {
            "requests": self.requests,
            "input_tokens": self.prompt_tokens,
            "output_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cost": self.cost,
        }

    def __str__(self) -> str:
        cost = "cost unknown" if self.cost is None else usd(self.cost)
        return (
            f"{self.name}: {self.requests} request{'' if self.requests == 1 else 's'}, "
            f"{self.prompt_tokens} tokens in "
            f"({self.cached_tokens} cached), {self.completion_tokens} out, {cost}"
        )


@dataclass(frozen=True, slots=True)
class UsageReport:
    """Tokens and cost in all, per model and per key (masked)."""

    total: UsageRow = field(default_factory=lambda: UsageRow("total"))
    by_model: tuple[UsageRow, ...] = ()
    by_key: tuple[UsageRow, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: ``tokens`` ({input, output, cached}), ``cost`` (USD, None: unknown),
        ``by_model`` and ``by_key`` (masked) mapping each name to `UsageRow.to_dict`."""
        total = self.total
        return {
            "tokens": {
                "input": total.prompt_tokens,
                "output": total.completion_tokens,
                "cached": total.cached_tokens,
            },
            "cost": total.cost,
            "by_model": {row.name: row.to_dict() for row in self.by_model},
            "by_key": {row.name: row.to_dict() for row in self.by_key},
        }

    def lines(self) -> list[str]:
        """The report as text lines: the total, then each model and key, indented."""
        return [
            str(self.total),
            *(f"  model {row}" for row in self.by_model),
            *(f"  key {row}" for row in self.by_key),
        ]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of the whole pool: per-key statistics and totals."""

    keys: tuple[KeyStats, ...]
    requests: int
    successes: int
    rate_limited: int
    errors: int
    tokens: int
    active_keys: int
    in_flight: int
    latency: float | None = None  # seconds from a slot's grant to the answer (moving average)
    oldest_in_flight: float | None = None  # seconds since the oldest unsettled grant
    waiting: int = 0  # threads waiting for a slot now
    usage: UsageReport = field(default_factory=UsageReport)  # tokens, cost per model and key

    @classmethod
    def of(
        cls,
        keys: Sequence[KeyStats],
        *,
        in_flight: int,
        latency: float | None,
        oldest_in_flight: float | None,
        waiting: int,
        usage: UsageReport,
    ) -> PoolStats:
        """The snapshot of `keys`, with their totals."""
        return cls(
            keys=tuple(keys),
            requests=sum(s.requests for s in keys),
            successes=sum(s.successes for s in keys),
            rate_limited=sum(s.rate_limited for s in keys),
            errors=sum(s.errors for s in keys),
            tokens=sum(s.tokens for s in keys),
            active_keys=sum(s.state is not KeyState.REMOVED for s in keys),
            in_flight=in_flight,
            latency=latency,
            oldest_in_flight=oldest_in_flight,
            waiting=waiting,
            usage=usage,
        )


@dataclass(frozen=True, slots=True)
class PoolCapacity:
    """Known limits (per minute) and what is left now, summed over the usable groups.

    None where no group knows that limit.
    """

    limit_requests: float | None
    remaining_requests: float | None
    limit_tokens: float | None
    remaining_tokens: float | None
    active_keys: int


def request_figures(
    requests: int,
    answered: int,
    failures: int,
    rate_limited: int,
    usage: UsageReport,
    elapsed: float,
) -> dict[str, object]:
    """The request counts, tokens, cost and pace every run summary's JSON shares."""
    return {
        "requests": requests,
        "successes": answered,
        "failures": failures,
        "rate_limited": rate_limited,
        **usage.to_dict(),
        "elapsed_seconds": round(elapsed, 3),
        "requests_per_second": round(requests / max(elapsed, 1e-9), 3),
    }
