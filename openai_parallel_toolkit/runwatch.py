"""A run on a key pool, watched from its start: its figures at any moment, for a progress bar
or a status line.

`RunWatch` keeps the pool's stats at the run's start (for counts such as 429s) and a few
recent snapshots, so that rates are those of the last `RATE_WINDOW_SECONDS`: a run that
slowed down a minute ago shows its speed now, not its average since the start. `ItemBar` is
a tqdm bar over items with those figures beside it, refreshed at most twice a second.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from .runfigures import RunFigures, run_figures
from .stats import PoolStats, UsageReport

if TYPE_CHECKING:
    from .costs import UsageLedger
    from .keys import APIKeyManager

__all__ = ["RATE_WINDOW_SECONDS", "ItemBar", "RunWatch"]

RATE_WINDOW_SECONDS = 10.0
# Snapshots kept per window: enough for a rate that slides smoothly, few enough to cost nothing.
_SNAPSHOTS_PER_WINDOW = 20
_BAR_REFRESH_SECONDS = 0.5

# (wall seconds, CPU seconds, the pool's stats) at one moment of the run
_Snapshot = tuple[float, float, PoolStats]


class RunWatch:
    """The figures of a run of `total` items on `manager`, from the moment it is built.

    `ledger` counts the run's tokens and cost (None: cost unknown); `workers` says how many
    requests the run may keep in flight now (None: not known), to tell when the workers and
    not the limits hold it back. `total` may grow as the run goes (inputs found late). `clock`
    (wall seconds) and `cpu_clock` (the process's CPU seconds, to tell a run the CPU holds
    back) are injectable for tests.
    """

    def __init__(
        self,
        manager: APIKeyManager,
        total: int,
        *,
        ledger: UsageLedger | None = None,
        workers: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self._manager = manager
        self.total = total
        self._ledger = ledger
        self._workers = workers
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._started = clock()
        self._baseline = manager.statistics()
        self._recent: deque[_Snapshot] = deque([(self._started, cpu_clock(), self._baseline)])

    @property
    def baseline(self) -> PoolStats:
        """The pool's stats when the run started."""
        return self._baseline

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return self._clock() - self._started

    def figures(self, finished: int, failed: int) -> RunFigures:
        """The run's figures now, `finished` items of which `failed` failed."""
        now, cpu = self._clock(), self._cpu_clock()
        stats = self._manager.statistics()
        then, cpu_then, since = self._rate_start((now, cpu, stats))
        seconds = now - then
        ledger = self._ledger
        return run_figures(
            stats=stats,
            baseline=self._baseline,
            capacity=self._manager.capacity(),
            usage=ledger.report() if ledger is not None else UsageReport(),
            finished=finished,
            failed=failed,
            total=self.total,
            elapsed=now - self._started,
            workers=None if self._workers is None else self._workers(),
            rates_since=(since, seconds),
            cpu_busy=(cpu - cpu_then) / seconds if seconds > 0 else None,
        )

    def _rate_start(self, snapshot: _Snapshot) -> _Snapshot:
        """The newest snapshot at least a window older than `snapshot` (the start, early on);
        records `snapshot`."""
        recent = self._recent
        now = snapshot[0]
        while len(recent) > 1 and recent[1][0] <= now - RATE_WINDOW_SECONDS:
            recent.popleft()
        start = recent[0]
        if now - recent[-1][0] >= RATE_WINDOW_SECONDS / _SNAPSHOTS_PER_WINDOW:
            recent.append(snapshot)
        return start


class ItemBar:
    """A tqdm bar over `total` items (shown unless `show` is False), with the `figures` of the
    run beside it (a `RunWatch`; None: the bare bar), refreshed at most twice a second."""

    def __init__(
        self, total: int, *, show: bool, desc: str | None, figures: RunWatch | None = None
    ) -> None:
        self.bar: tqdm[Any] = tqdm(
            total=total, desc=desc, disable=not show, leave=True, dynamic_ncols=True
        )
        self._figures = figures if show else None
        self._finished = self._failed = 0
        self._shown = time.monotonic()

    def one_done(self, failed: bool) -> None:
        """Count one item ended (`failed` or not) and refresh the figures now and then."""
        self._finished += 1
        self._failed += failed
        self.bar.update(1)
        now = time.monotonic()
        if self._figures is not None and now - self._shown >= _BAR_REFRESH_SECONDS:
            self._shown = now
            self._show(refresh=False)

    def _show(self, *, refresh: bool) -> None:
        assert self._figures is not None
        fields: Mapping[str, str] = self._figures.figures(self._finished, self._failed).postfix()
        self.bar.set_postfix(fields, refresh=refresh)

    def close(self) -> None:
        """The last figures, then close the bar."""
        if self._figures is not None:
            self._show(refresh=False)
        self.bar.close()
