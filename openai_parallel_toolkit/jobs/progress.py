"""How a JSONL job shows itself on stderr while it runs: a bar on a terminal, else status lines.

Both show the figures of a `RunWatch`: requests/s, tokens/s, 429s, keys healthy / cooling /
removed, cost so far and projected, the share of the pool's ceiling in use and, when the run
is slower than its limits allow, which limit binds.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Protocol

from tqdm.auto import tqdm

from ..keys import APIKeyManager
from ..runfigures import RunFigures
from ..runwatch import RunWatch

if TYPE_CHECKING:
    from .sending import SendOptions

__all__ = ["Counts", "Progress"]

_BAR_REFRESH_SECONDS = 0.5


class Counts(Protocol):
    """The run's line counts, as the sink keeps them."""

    done: int
    failed: int
    echo_broken: bool


def _interactive(stream: IO[str]) -> bool:
    """True when `stream` shows a progress bar well: a terminal, or a Jupyter/IPython kernel."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
    return "ipykernel" in sys.modules


class _StatusLines:
    """A plain status line on stderr every `interval` seconds and one at the end.

    For logs (CI, ``nohup``, a pipe), where a progress bar's carriage returns are noise. Lines
    are written by a timer thread, so a run stalled on rate limits still reports.
    """

    def __init__(self, describe: Callable[[], str], interval: float) -> None:
        self._describe = describe
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="jsonl-status", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._print()

    def _print(self) -> None:
        print(f"status: {self._describe()}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop the timer and write the final status line."""
        self._stop.set()
        self._thread.join()
        self._print()


class Progress:
    """A run's display: a bar on a terminal (or Jupyter), else status lines.

    `workers` tells how many requests the run may keep in flight now, to tell when the
    workers, not the limits, hold it back.
    """

    def __init__(
        self,
        manager: APIKeyManager,
        total: int,
        options: SendOptions,
        *,
        workers: Callable[[], int],
    ) -> None:
        self._options = options
        meter = options.meter
        ledger = meter.ledger if meter is not None else None
        self._watch = RunWatch(manager, total, ledger=ledger, workers=workers)
        self._last = time.monotonic()
        self._show_bar = options.progress and _interactive(sys.stderr)
        self.bar = tqdm(
            total=total, desc="requests", unit="req", disable=not self._show_bar,
            dynamic_ncols=True,
        )  # fmt: skip
        self._counts: Counts | None = None
        self._status: _StatusLines | None = None

    def start(self, counts: Counts) -> None:
        """Follow `counts`; off a terminal, start the status lines."""
        self._counts = counts
        if self._options.progress and not self._show_bar:
            self._status = _StatusLines(
                lambda: self.figures().status_text(), self._options.status_interval
            )

    def figures(self) -> RunFigures:
        """The run's figures now."""
        assert self._counts is not None
        return self._watch.figures(self._counts.done + self._counts.failed, self._counts.failed)

    def one_done(self) -> bool:
        """After each item: refresh the bar now and then; False to stop the run."""
        assert self._counts is not None
        now = time.monotonic()
        if self._show_bar and now - self._last > _BAR_REFRESH_SECONDS:
            self._last = now
            self._postfix()
        meter = self._options.meter
        if meter is not None and meter.reached and not self._options.use_async:
            # The cost cap: no new work; the threads finish what is in flight. (Tasks would be
            # cancelled by stopping: there the rest is refused unsent, one by one, at once.)
            return False
        return not self._counts.echo_broken  # nobody reads the results any more: stop as Ctrl-C

    def _postfix(self) -> None:
        self.bar.set_postfix(self.figures().postfix(), refresh=False)

    def close(self) -> None:
        """The bar's last figures, then the final status line."""
        if self._counts is not None and self._show_bar:
            self._postfix()
        self.bar.close()
        if self._status is not None:
            self._status.close()
