"""A continuously refilling bucket: the request or token budget of one limit group."""

from __future__ import annotations

__all__ = ["FULL_BUCKET_MARGIN_SECONDS", "Bucket"]

# Sends that need a full bucket go this much later than the bucket says: thread wake-ups and
# the network shift arrival times by milliseconds, which a full bucket on the server cannot absorb.
FULL_BUCKET_MARGIN_SECONDS = 0.05


class Bucket:
    """A continuously refilling bucket: `level` as of `updated`, `rate` per second.

    Slots are only ever taken at "now", so `updated` is never later than the clock.
    """

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, per_minute: float, burst_seconds: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self.updated = now

    @classmethod
    def of(cls, per_minute: float | None, burst_seconds: float, now: float) -> Bucket | None:
        """A full bucket for the limit `per_minute`; None when there is no limit."""
        return cls(per_minute, burst_seconds, now) if per_minute else None

    def set_limit(self, per_minute: float, burst_seconds: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = min(self.level, self.capacity)

    def pace(self, per_minute: float, burst_seconds: float) -> None:
        """Refill at `per_minute` from now on (nothing changes when it already does)."""
        if abs(self.rate * 60.0 - per_minute) > 1e-9:
            self.set_limit(per_minute, burst_seconds)

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
