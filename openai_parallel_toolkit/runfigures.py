"""How a run is going, in figures a progress bar or a status line shows, and which limit binds.

`run_figures` is pure: it reads frozen snapshots (`PoolStats` now and at the start, the pool's
`PoolCapacity`, the run's `UsageReport`) and the run's own counts, and says what they mean:
rates, 429s, key health, cost so far and projected, the share of the pool's ceiling in use,
and, when the run is slower than its limits allow, what holds it back.
"""

from __future__ import annotations

from dataclasses import dataclass

from .prices import usd
from .stats import KeyState, PoolCapacity, PoolStats, UsageReport

__all__ = ["Binding", "RunFigures", "run_figures"]

# Below this share of the ceiling with every worker busy, the workers are what binds.
_BUSY_BELOW_CEILING = 0.9
# CPU seconds per second of this process from which the CPU, not the network, holds a run back
# (one core: the interpreter runs one thread at a time).
_CPU_BOUND = 0.9


class Binding:
    """What holds a run back (`RunFigures.binding`), as shown after ``limited by``."""

    REQUESTS = "requests/min limit"
    TOKENS = "tokens/min limit"
    RATE = "rate limit"  # requests wait for the limiter, and no limit is known yet
    COOLING = "a cooling key group (429)"
    CPU = "CPU (this process is busy: share the job among processes with --worker)"
    WORKERS = "too few workers (raise --threads)"


@dataclass(frozen=True, slots=True)
class RunFigures:
    """A run's figures now: counts, rates (over the recent past with `RunWatch`), 429s, keys
    by health, cost (USD; None: some price unknown) so far and projected to the whole run,
    the share of the pool's ceiling in use (None: no limit known) and what binds (None:
    nothing the stats can tell)."""

    finished: int
    total: int
    failed: int
    elapsed: float
    requests_per_s: float
    tokens_per_s: float
    rate_limited: int
    keys_healthy: int
    keys_cooling: int
    keys_removed: int
    cost: float | None
    projected_cost: float | None
    ceiling_share: float | None
    binding: str | None

    def status_text(self) -> str:
        """One status line (without the ``status:`` prefix)."""
        parts = [
            f"{self.finished}/{self.total} requests finished, {self.failed} failed",
            f"{self.requests_per_s:.1f} req/s",
            f"{self.tokens_per_s:.0f} tokens/s",
            f"{self.rate_limited} rate-limited (429)",
            f"keys {self.keys_healthy} healthy / {self.keys_cooling} cooling / "
            f"{self.keys_removed} removed",
            self._cost_text(),
            "ceiling "
            + ("unknown" if self.ceiling_share is None else f"{self.ceiling_share:.0%} in use"),
            f"{self.elapsed:.0f} s",
        ]
        if self.binding is not None:
            parts.append(f"limited by {self.binding}")
        return ", ".join(parts)

    def postfix(self) -> dict[str, str]:
        """The short fields of a progress bar's postfix."""
        fields = {
            "req_s": f"{self.requests_per_s:.1f}",
            "tok_s": f"{self.tokens_per_s:.0f}",
            "r429": str(self.rate_limited),
            "failed": str(self.failed),
            "keys": f"{self.keys_healthy}/{self.keys_cooling}/{self.keys_removed}",
            "cost": "?" if self.cost is None else usd(self.cost),
        }
        if self.projected_cost is not None:
            fields["proj"] = usd(self.projected_cost)
        if self.ceiling_share is not None:
            fields["ceiling"] = f"{self.ceiling_share:.0%}"
        if self.binding is not None:
            fields["limit"] = self.binding
        return fields

    def _cost_text(self) -> str:
        if self.cost is None:
            return "cost unknown"
        text = f"{usd(self.cost)} spent"
        if self.projected_cost is not None:
            text += f", {usd(self.projected_cost)} projected"
        return text


def run_figures(
    *,
    stats: PoolStats,
    baseline: PoolStats,
    capacity: PoolCapacity,
    usage: UsageReport,
    finished: int,
    failed: int,
    total: int,
    elapsed: float,
    workers: int | None,
    rates_since: tuple[PoolStats, float] | None = None,
    cpu_busy: float | None = None,
) -> RunFigures:
    """The figures of a run that finished `finished` of `total` items (`failed` of them
    failed) in `elapsed` seconds, from the pool's stats now and at its start; `workers` is
    how many requests the run may keep in flight now (None: not known). Rates are measured
    from `rates_since` (the stats then, and the seconds since), else over the whole run;
    `cpu_busy` is the process's CPU seconds per second over that time (None: not known)."""
    since, seconds = rates_since if rates_since is not None else (baseline, elapsed)
    seconds = max(seconds, 1e-9)
    requests_per_s = (stats.requests - since.requests) / seconds
    tokens_per_s = (stats.tokens - since.tokens) / seconds
    states = [key.state for key in stats.keys]
    cost = usage.total.cost
    projected = None
    if cost is not None and 0 < finished < total:
        projected = cost / finished * total  # the rest costs what the finished ones did
    elif cost is not None and finished >= total:
        projected = cost
    request_share = _share(requests_per_s * 60.0, capacity.limit_requests)
    token_share = _share(tokens_per_s * 60.0, capacity.limit_tokens)
    shares = [share for share in (request_share, token_share) if share is not None]
    ceiling = max(shares) if shares else None
    cooling = states.count(KeyState.COOLING_DOWN)
    return RunFigures(
        finished=finished,
        total=total,
        failed=failed,
        elapsed=elapsed,
        requests_per_s=requests_per_s,
        tokens_per_s=tokens_per_s,
        rate_limited=stats.rate_limited - baseline.rate_limited,
        keys_healthy=states.count(KeyState.ACTIVE),
        keys_cooling=cooling,
        keys_removed=states.count(KeyState.REMOVED),
        cost=cost,
        projected_cost=projected,
        ceiling_share=ceiling,
        binding=_binding(stats, cooling, (request_share, token_share), ceiling, workers, cpu_busy),
    )


def _share(rate_per_min: float, limit_per_min: float | None) -> float | None:
    return None if not limit_per_min else rate_per_min / limit_per_min


def _binding(
    stats: PoolStats,
    cooling: int,
    shares: tuple[float | None, float | None],
    ceiling: float | None,
    workers: int | None,
    cpu_busy: float | None,
) -> str | None:
    """What holds the run back now, where the stats can tell; None otherwise. `shares`: of the
    requests and tokens ceilings in use."""
    request_share, token_share = shares
    if cooling:
        return Binding.COOLING  # a group told to wait by the server paces nothing meanwhile
    if stats.waiting:
        # Requests queue for the limiter: the limit nearer its ceiling is the one that binds.
        if request_share is None and token_share is None:
            return Binding.RATE
        if token_share is not None and (request_share is None or token_share >= request_share):
            return Binding.TOKENS
        return Binding.REQUESTS
    below = ceiling is None or ceiling < _BUSY_BELOW_CEILING
    if cpu_busy is not None and cpu_busy >= _CPU_BOUND and below:
        return Binding.CPU  # more workers would only queue for the interpreter
    if workers is not None and stats.in_flight >= workers and below:
        return Binding.WORKERS  # every worker is busy and nobody waits for the limiter
    return None
