"""The default store: limiter state held in this process only."""

from __future__ import annotations

from collections.abc import Callable

from ..limiter import LimitGroup
from .base import GroupSpec, KeyHealth

__all__ = ["MemoryStore"]


class MemoryStore:
    """Limit groups and key health in plain dictionaries, for one process's pool."""

    def __init__(self) -> None:
        self._groups: dict[str, LimitGroup] = {}
        self._health: dict[str, KeyHealth] = {}

    def group(self, spec: GroupSpec, now: float) -> LimitGroup:
        """The group `spec.name` (made from `spec` on first request)."""
        group = self._groups.get(spec.name)
        if group is None:
            group = self._groups[spec.name] = LimitGroup(
                spec.name,
                requests_per_min=spec.requests_per_min,
                tokens_per_min=spec.tokens_per_min,
                burst_seconds=spec.burst_seconds,
                now=now,
            )
        return group

    def health(self, key_id: str) -> KeyHealth:
        """The health record of the key `key_id`."""
        return self._health.setdefault(key_id, KeyHealth())

    def groups(self) -> list[LimitGroup]:
        """Every group handed out so far."""
        return list(self._groups.values())

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Nothing arrives from elsewhere: `wake` is never called."""

    def close(self) -> None:
        """Nothing to hand back."""

    def __repr__(self) -> str:
        return f"<MemoryStore {len(self._groups)} groups, {len(self._health)} keys>"
