"""Faults injected per key: what `FakeOpenAIServer.set_fault` accepts and which request gets one."""

from __future__ import annotations

import random
import threading

__all__ = ["FAULTS", "Faults"]

FAULTS: frozenset[str] = frozenset(
    {
        "insufficient_quota",
        "invalid_api_key",
        "server_error",
        "rate_limit",
        "rate_limit_bare",
        "slow",
        "drop",
    }
)
"""The fault names accepted by `FakeOpenAIServer.set_fault`.

``rate_limit`` is a 429 ``rate_limit_exceeded`` with ``retry-after: 1`` (the server's
`fault_retry_after`); ``rate_limit_bare`` the
same 429 with no ``retry-after`` and no ``x-ratelimit-*`` headers at all. Neither is charged to
the limits: they are 429s that do not mean the limit is used up.
"""


class _Fault:
    __slots__ = ("kind", "probability", "remaining")

    def __init__(self, kind: str, remaining: int | None, probability: float) -> None:
        self.kind = kind
        self.remaining = remaining
        self.probability = probability


class Faults:
    """The fault of each key (``"*"``: of every key); thread-safe.

    `rng` decides the faults given with a probability (the server's seeded generator).
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._lock = threading.Lock()
        self._faults: dict[str, _Fault] = {}

    def __bool__(self) -> bool:
        return bool(self._faults)

    def set(
        self, key: str, fault: str, *, times: int | None = None, probability: float = 1.0
    ) -> None:
        """Give `key` this fault (see `FakeOpenAIServer.set_fault`)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        with self._lock:
            self._faults[key] = _Fault(fault, times, probability)

    def clear(self, key: str | None = None) -> None:
        """Remove the fault of `key` (``"*"`` included), or every fault when `key` is None."""
        with self._lock:
            if key is None:
                self._faults.clear()
            else:
                self._faults.pop(key, None)

    def pick(self, key: str) -> str | None:
        """The fault this request of `key` gets, if any: the key's own before the ``"*"`` one."""
        with self._lock:
            for name in (key, "*"):
                fault = self._faults.get(name)
                if fault is None:
                    continue
                if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        del self._faults[name]
                return fault.kind
        return None
