"""The store interface: what a key pool needs to keep its limiter state somewhere."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..limiter import LimitGroup

__all__ = ["GroupSpec", "KeyHealth", "LimiterStore"]


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """What a limit group is made from: its name, configured limits (None: learn) and burst."""

    name: str
    requests_per_min: float | None
    tokens_per_min: float | None
    burst_seconds: float


class KeyHealth:
    """Whether a key may still be used; `removed_reason` says why not once it was removed."""

    __slots__ = ("removed_reason",)

    def __init__(self) -> None:
        self.removed_reason: str | None = None

    def remove(self, reason: str) -> bool:
        """Mark the key removed; True if it was usable until now (the first reason stays)."""
        if self.removed_reason is not None:
            return False
        self.removed_reason = reason
        return True

    def __repr__(self) -> str:
        return f"<KeyHealth removed={self.removed_reason!r}>"


class LimiterStore(Protocol):
    """Hands out the state of limit groups and keys, created on first request, by name.

    Every call is made under the key pool's lock, on the path of each grant, so it must not
    wait on I/O: a store shared between processes keeps local objects and brings them in step
    with the others in the background, a slice of budget at a time.
    """

    def group(self, spec: GroupSpec, now: float) -> LimitGroup:
        """The state of the limit group `spec.name` (made from `spec` if new)."""
        ...

    def health(self, key_id: str) -> KeyHealth:
        """The health record of the key whose id (a hash, never the key) is `key_id`."""
        ...

    def groups(self) -> list[LimitGroup]:
        """Every group handed out so far."""
        ...

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Have `wake` called (from any thread) when budget arrives from elsewhere, so that
        a sender waiting for it looks again."""
        ...

    def close(self) -> None:
        """Hand back what this process holds and stop any background work."""
        ...
