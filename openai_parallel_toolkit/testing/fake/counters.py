"""What the fake server saw: counters per key, the request log and the requests in flight."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["KeyCounters", "Traffic"]

_LOG_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class KeyCounters:
    """What the server saw for one key (or in total): a snapshot, safe to keep.

    ``rate_limited`` counts 429s caused by the rate limits; every other non-2xx reply
    (auth failures, injected faults including the ``rate_limit`` fault, 400s, dropped
    connections) counts in ``errors``. Token counts are those billed on successful replies.
    """

    requests: int = 0
    successes: int = 0
    rate_limited: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    charged_tokens: int = 0  # what admitted requests cost the token limit (prompt + max_tokens)
    cached_tokens: int = 0  # of prompt_tokens, those reported as cached (a repeated prefix)


class _Counts:
    __slots__ = (
        "cached_tokens",
        "charged_tokens",
        "completion_tokens",
        "errors",
        "prompt_tokens",
        "rate_limited",
        "requests",
        "successes",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.successes = 0
        self.rate_limited = 0
        self.errors = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.charged_tokens = 0
        self.cached_tokens = 0

    def snapshot(self) -> KeyCounters:
        return KeyCounters(
            requests=self.requests,
            successes=self.successes,
            rate_limited=self.rate_limited,
            errors=self.errors,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            charged_tokens=self.charged_tokens,
            cached_tokens=self.cached_tokens,
        )


class Traffic:
    """The counters, log and in-flight counts of one server; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, _Counts] = {}
        self._log: collections.deque[dict[str, Any]] = collections.deque(maxlen=_LOG_SIZE)
        # Requests being handled now, and the most at once; per key and in total (key None).
        self._in_flight: collections.Counter[str | None] = collections.Counter()
        self._peak_in_flight: collections.Counter[str | None] = collections.Counter()

    def counters(self) -> dict[str, KeyCounters]:
        """A snapshot of the per-key counters, keyed by the raw API key."""
        with self._lock:
            return {key: counts.snapshot() for key, counts in self._counts.items()}

    def total(self) -> KeyCounters:
        """The counters summed over all keys."""
        snapshots = self.counters().values()
        return KeyCounters(
            **{f.name: sum(getattr(s, f.name) for s in snapshots) for f in fields(KeyCounters)}
        )

    def reset(self) -> None:
        """Zero every counter and empty the log; the peaks start again from the requests in
        flight now."""
        with self._lock:
            self._counts.clear()
            self._log.clear()
            self._peak_in_flight = self._in_flight.copy()

    def in_flight(self, key: str | None) -> int:
        """Requests of `key` (None: of every key) being handled right now."""
        with self._lock:
            return self._in_flight[key]

    def peak_in_flight(self, key: str | None) -> int:
        """The most requests of `key` (None: of any keys) handled at the same time."""
        with self._lock:
            return self._peak_in_flight[key]

    def enter(self, key: str) -> None:
        """A request of `key` arrived."""
        with self._lock:
            for name in (key, None):
                self._in_flight[name] += 1
                self._peak_in_flight[name] = max(self._peak_in_flight[name], self._in_flight[name])

    def leave(self, key: str) -> None:
        """A request of `key` has had its whole reply (or its connection cut)."""
        with self._lock:
            for name in (key, None):
                self._in_flight[name] -= 1

    def log(self) -> list[dict[str, Any]]:
        """The last 10,000 requests, oldest first."""
        with self._lock:
            return list(self._log)

    def arrived(self, key: str | None, method: str, path: str, body: Any) -> None:
        """Count a request of `key` ("" when it had none) and log it."""
        with self._lock:
            ckey = key or ""
            if ckey not in self._counts:
                self._counts[ckey] = _Counts()
            self._counts[ckey].requests += 1
            self._log.append({"key": key, "method": method, "path": path, "body": body})

    def charged(self, key: str, tokens: int) -> None:
        """`key`'s request was admitted at a cost of `tokens` to the token limit."""
        with self._lock:
            self._counts[key].charged_tokens += tokens

    def finish(
        self, key: str, outcome: str, prompt: int = 0, completion: int = 0, cached: int = 0
    ) -> None:
        """Count how `key`'s request ended: ``ok`` (with its tokens), ``limited`` or ``error``."""
        with self._lock:
            counts = self._counts[key]
            if outcome == "ok":
                counts.successes += 1
                counts.prompt_tokens += prompt
                counts.completion_tokens += completion
                counts.cached_tokens += cached
            elif outcome == "limited":
                counts.rate_limited += 1
            else:
                counts.errors += 1
