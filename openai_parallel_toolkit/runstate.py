"""What one `ParallelToolkit` run did, and how it is shown while it runs.

`RunState` counts each input once, whatever happens to it: processed, skipped (done before,
or adopted from existing outputs) or failed. Worker threads record their outcomes; the main
thread mirrors the counts on the progress bar, so the bar never counts an input twice. Once a
run is abandoned (a second Ctrl-C), late outcomes of the files still in progress are dropped
quietly: those files are simply not done, and the next run does them.

`logs_above` keeps console log lines off the progress bar's line while the bar is shown.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from tqdm.auto import tqdm

from .costs import UsageLedger
from .errors import redact
from .keys import APIKeyManager, PoolStats
from .runwatch import RunWatch
from .stats import UsageReport, request_figures

__all__ = ["FileFailure", "RunState", "RunSummary", "logs_above"]

# Failures are logged under ParallelToolkit's own module name, where they were before the split.
logger = logging.getLogger("openai_parallel_toolkit.toolkit")

_PROGRESS_REFRESH_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class FileFailure:
    """An input file that failed in this run (it has no output and is retried next run)."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What `ParallelToolkit.run` did.

    `skipped` counts the inputs already done; `adopted` says how many of them were taken as
    done because an output was already there (``adopt_existing_outputs=True``). `requests`,
    `answered`, `rate_limited` (429s) and `request_errors` count the pool's tries during the
    run (every try, retries included); `usage` holds the tokens and cost of the answers the
    hooks got, in all, per model and per key (masked); answers from the response cache cost
    nothing and are not in it.
    """

    processed: int
    skipped: int
    failed: tuple[FileFailure, ...]
    interrupted: bool
    elapsed: float
    adopted: int = 0
    requests: int = 0
    answered: int = 0
    rate_limited: int = 0
    request_errors: int = 0
    usage: UsageReport = field(default_factory=UsageReport)

    @property
    def ok(self) -> bool:
        """True when nothing failed and the run was not interrupted."""
        return not self.failed and not self.interrupted

    def __str__(self) -> str:
        done = "already done"
        if self.adopted:
            done += f", {self.adopted} of them adopted from existing outputs"
        head = (
            f"processed {self.processed}, skipped {self.skipped} ({done}), "
            f"failed {len(self.failed)} in {self.elapsed:.1f} s"
        )
        if self.interrupted:
            head += " (interrupted: run again to continue)"
        lines = [head] + [f"  failed: {f.path}: {f.reason}" for f in self.failed]
        if self.requests:
            lines.append(
                f"requests {self.requests} ({self.requests / max(self.elapsed, 1e-9):.1f}/s), "
                f"rate-limited (429) {self.rate_limited}, errors {self.request_errors}"
            )
        if self.usage.total.requests:
            lines.extend(self.usage.lines())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        """The summary as JSON-ready values (the shape the README documents)."""
        return {
            "version": 1,
            "files": {
                "processed": self.processed,
                "skipped": self.skipped,
                "adopted": self.adopted,
                "failed": {failure.path: failure.reason for failure in self.failed},
            },
            **request_figures(
                self.requests,
                self.answered,
                self.request_errors,
                self.rate_limited,
                self.usage,
                self.elapsed,
            ),
            "interrupted": self.interrupted,
            "ok": self.ok,
        }


def failure_reason(exc: BaseException) -> str:
    """One line saying why an input failed, secrets redacted."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
    text = str(exc) or repr(exc)
    return redact(f"{type(exc).__name__}: {text}")


class RunState:
    """The counters of one run, shared by the worker threads; the bar mirrors them."""

    def __init__(self, manager: APIKeyManager, total: int) -> None:
        self._lock = threading.Lock()
        self._abandoned = threading.Event()
        self._processed = 0
        self._skipped = 0
        self._adopted = 0
        self._failures: list[FileFailure] = []
        self._last_postfix = float("-inf")
        self.ledger = UsageLedger()  # what the run's answers cost (see costs.counting_into)
        # Its figures count files: "finished" and the cost projected are per input file.
        self._watch = RunWatch(manager, total, ledger=self.ledger)

    @property
    def abandoned(self) -> bool:
        """True once the run was abandoned: outcomes from now on are dropped."""
        return self._abandoned.is_set()

    def abandon(self) -> None:
        """Stop counting: files still in progress publish nothing and are not reported."""
        self._abandoned.set()

    def succeed(self) -> None:
        """An input was processed and its outputs are in place."""
        with self._lock:
            self._processed += 1

    def skip(self, *, adopted: bool = False) -> None:
        """An input was already done (`adopted`: because an output was already there)."""
        with self._lock:
            self._skipped += 1
            if adopted:
                self._adopted += 1

    def fail(self, relative: str, exc: BaseException) -> None:
        """An input failed; after `abandon`, a failure is only logged at debug level."""
        reason = failure_reason(exc)
        if self.abandoned:
            logger.debug("abandoned: %s: %s", relative, reason, exc_info=exc)
            return
        logger.warning("failed: %s: %s", relative, reason)
        logger.debug("failure details for %s", relative, exc_info=exc)
        with self._lock:
            self._failures.append(FileFailure(relative, reason))

    def show(self, bar: tqdm[Any], *, force: bool = False) -> None:
        """Bring `bar` up to the counts (main thread only), with the run's figures (requests/s,
        tokens/s, 429s, keys, cost so far and projected, the ceiling in use) every half second."""
        now = time.monotonic()
        with self._lock:
            failed = len(self._failures)
            finished = self._processed + self._skipped + failed
            counts = {"done": self._processed, "skipped": self._skipped}
        if bar.total is not None and finished > bar.total:
            bar.total = self._watch.total = finished  # inputs added while the run lists them
        if force or now - self._last_postfix >= _PROGRESS_REFRESH_SECONDS:
            self._last_postfix = now
            figures = self._watch.figures(finished, failed)
            bar.set_postfix({**counts, **figures.postfix()}, refresh=False)
        if finished > bar.n:
            bar.update(finished - bar.n)
        elif force:
            bar.refresh()

    def summary(self, interrupted: bool, stats: PoolStats) -> RunSummary:
        """The frozen record of what the run did so far; `stats`: the pool's now."""
        baseline = self._watch.baseline
        with self._lock:
            return RunSummary(
                processed=self._processed,
                skipped=self._skipped,
                failed=tuple(self._failures),
                interrupted=interrupted,
                elapsed=self._watch.elapsed(),
                adopted=self._adopted,
                requests=stats.requests - baseline.requests,
                answered=stats.successes - baseline.successes,
                rate_limited=stats.rate_limited - baseline.rate_limited,
                request_errors=stats.errors - baseline.errors,
                usage=self.ledger.report(),
            )


class _AboveBars:
    """A text stream writing through `tqdm.write`: clear the bars, write, redraw them."""

    def __init__(self, bar_class: type[tqdm[Any]], target: IO[str] | None) -> None:
        self._bar_class = bar_class
        self._target = target  # None: whatever sys.stderr is at the time

    def _stream(self) -> IO[str]:
        return self._target if self._target is not None else sys.stderr

    def write(self, text: str) -> int:
        self._bar_class.write(text, file=self._stream(), end="")
        return len(text)

    def flush(self) -> None:
        self._stream().flush()


@contextlib.contextmanager
def logs_above(bar: tqdm[Any]) -> Iterator[None]:
    """While `bar` is shown, console log lines go above it instead of onto its line.

    Every handler writing to sys.stdout or sys.stderr, and logging's last resort (what prints
    warnings when nothing is configured), writes through `tqdm.write` within the block; all is
    restored after. No handler is added, removed or reconfigured otherwise.
    """
    if bar.disable:
        yield
        return
    bar_class = type(bar)
    consoles = (sys.stdout, sys.stderr)
    swapped: list[tuple[logging.StreamHandler[Any], IO[str]]] = []
    loggers = [logging.getLogger()] + [
        each
        for each in logging.Logger.manager.loggerDict.values()
        if isinstance(each, logging.Logger)
    ]
    handlers = {id(h): h for each in loggers for h in each.handlers}
    for handler in handlers.values():
        if isinstance(handler, logging.StreamHandler) and handler.stream in consoles:
            original = handler.stream
            handler.setStream(_AboveBars(bar_class, original))
            swapped.append((handler, original))
    last_resort = logging.lastResort
    if last_resort is not None:
        replacement = logging.StreamHandler(_AboveBars(bar_class, None))
        replacement.setLevel(last_resort.level)
        logging.lastResort = replacement
    try:
        yield
    finally:
        logging.lastResort = last_resort
        for handler, original in reversed(swapped):
            handler.setStream(original)
