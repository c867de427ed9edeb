"""What requests cost: tallies of tokens and USD per key and per model, and a hard budget.

`UsageLedger` adds up each answered request's usage and cost under its key (masked) and its
model; `APIKeyManager` keeps one for `statistics()`, and each run (a JSONL job, a
`multi_process_one` call) keeps its own in a `CostMeter`, which with `max_cost` is also the run's
budget: before a request is sent its worst case (prompt estimate + output allowance at the
model's price) is reserved, so that requests in flight together can never pass the cap; the
reservation is settled with the real cost once the answer is in.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal

from .prices import Usage
from .stats import UsageReport, UsageRow

__all__ = ["CostMeter", "UsageLedger", "counting_into", "record_in_context"]


@dataclass(slots=True)
class _Tally:
    # Plain counts, not a `Usage` sum: adding runs for every answer, in each ledger.
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: Decimal | None = Decimal(0)  # None once any request's cost was unknown

    def add(self, usage: Usage, cost: Decimal | None, requests: int = 1) -> None:
        self.requests += requests
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cached_tokens += usage.cached_tokens
        self.cost = None if cost is None or self.cost is None else self.cost + cost

    def row(self, name: str) -> UsageRow:
        return UsageRow(
            name=name,
            requests=self.requests,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens,
            cost=None if self.cost is None else float(self.cost),
        )


class UsageLedger:
    """Tokens and cost of answered requests, per key and per model (thread-safe).

    A total whose requests include one of unknown cost is itself unknown (None): a sum that
    left it out would be a wrong number.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = _Tally()
        self._keys: dict[str, _Tally] = {}
        self._models: dict[str, _Tally] = {}

    def record(
        self,
        key: str,
        model: str | None,
        usage: Usage,
        cost: Decimal | None,
        *,
        requests: int = 1,
    ) -> None:
        """Count an answered request on `key` (masked) of `model` (None: not known); or
        `requests` of them, whose summed usage and cost these are."""
        with self._lock:
            self._total.add(usage, cost, requests)
            _tally(self._keys, key).add(usage, cost, requests)
            _tally(self._models, model or "(unknown model)").add(usage, cost, requests)

    def key_row(self, key: str) -> UsageRow:
        """What `key` (masked) spent so far."""
        with self._lock:
            return self._keys.get(key, _Tally()).row(key)

    def report(self) -> UsageReport:
        """A frozen snapshot: the total, then one row per model and per key (first seen first)."""
        with self._lock:
            return UsageReport(
                total=self._total.row("total"),
                by_model=_rows(self._models.items()),
                by_key=_rows(self._keys.items()),
            )


def _tally(tallies: dict[str, _Tally], name: str) -> _Tally:
    """`name`'s tally, added if new (not a throw-away `_Tally` per answer, as `setdefault`)."""
    tally = tallies.get(name)
    if tally is None:
        tally = tallies[name] = _Tally()
    return tally


def _rows(tallies: Iterable[tuple[str, _Tally]]) -> tuple[UsageRow, ...]:
    return tuple(tally.row(name) for name, tally in tallies)


class CostMeter:
    """One run's spending: a `UsageLedger`, and with `max_cost` (USD) a hard budget.

    `reserve(worst)` takes a request's worst-case cost from what is left, or answers False
    (the request must not be sent) and marks the budget `reached`; `settle(reserved, actual)`
    replaces a reservation with what the answer cost (`actual` None: the reservation stands,
    since nothing better is known), `release(reserved)` gives back one never sent.
    """

    def __init__(self, max_cost: float | Decimal | None = None) -> None:
        if max_cost is not None:
            if isinstance(max_cost, bool) or not isinstance(max_cost, int | float | Decimal):
                raise TypeError(f"max_cost must be a number of USD, not {max_cost!r}")
            max_cost = Decimal(str(max_cost))
            if not max_cost.is_finite() or max_cost < 0:
                raise ValueError(f"max_cost must be a finite number of USD >= 0, not {max_cost}")
        self.max_cost: Decimal | None = max_cost
        self.ledger = UsageLedger()
        self._lock = threading.Lock()
        self._spent = Decimal(0)
        self._reserved = Decimal(0)
        self.reached = False

    @property
    def capped(self) -> bool:
        """True when this meter is a budget (`max_cost` set)."""
        return self.max_cost is not None

    @property
    def spent(self) -> Decimal:
        """USD settled so far (answers whose cost was unknown count at their reservation)."""
        with self._lock:
            return self._spent

    def reserve(self, worst: Decimal) -> bool:
        """Reserve `worst` USD for one request; False (and `reached`) if it would pass the cap."""
        with self._lock:
            if self.max_cost is None:
                return True
            if self.reached or self._spent + self._reserved + worst > self.max_cost:
                self.reached = True  # no new work from now on, even if a cheaper one would fit
                return False
            self._reserved += worst
            return True

    def settle(self, reserved: Decimal, actual: Decimal | None) -> None:
        """A request reserved at `reserved` was answered, costing `actual` (None: unknown)."""
        with self._lock:
            self._reserved -= reserved
            self._spent += reserved if actual is None else actual

    def release(self, reserved: Decimal) -> None:
        """A request reserved at `reserved` was not answered: nothing was spent."""
        with self._lock:
            self._reserved -= reserved

    def __repr__(self) -> str:
        cap = "no cap" if self.max_cost is None else f"cap ${self.max_cost}"
        return f"<CostMeter spent ${self.spent} of {cap}{' (reached)' if self.reached else ''}>"


# The ledgers of the runs the current code runs inside (a ParallelToolkit run): every answer
# is counted in each, whichever call sent it (request_openai_api, multi_process_one in a hook).
# A context variable follows the work into worker threads and tasks, which copy the context.
_counting: contextvars.ContextVar[tuple[UsageLedger, ...]] = contextvars.ContextVar(
    "openai_parallel_toolkit_counting", default=()
)


@contextlib.contextmanager
def counting_into(ledger: UsageLedger) -> Iterator[UsageLedger]:
    """Within the block (and the threads and tasks started from it), count every answered
    request in `ledger` too."""
    token = _counting.set((*_counting.get(), ledger))
    try:
        yield ledger
    finally:
        _counting.reset(token)


def record_in_context(key: str, model: str | None, usage: Usage, cost: Decimal | None) -> None:
    """Count one answer in the ledgers of the runs around this code (see `counting_into`)."""
    for ledger in _counting.get():
        ledger.record(key, model, usage, cost)
