"""Running a JSONL job: send every line not yet answered, append one result line per item.

Each result line is written and flushed by the worker that finished the item, so a crash or an
interrupt loses nothing finished. See the package docstring for the whole contract.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..costs import CostMeter
from ..keys import APIKeyManager
from ..models import RawRequest
from ..prices import usd
from ..request import RetryPolicy
from ..stats import PoolStats, UsageReport, request_figures
from .plan import JobPlan, check_paths, prepare_job
from .results import ExistingResults, check_ordered_target, write_ordered
from .sending import SendOptions, Sink, send_items

__all__ = ["JobSummary", "run_jsonl_job", "with_pool_counts"]


@dataclass(frozen=True, slots=True)
class JobSummary:
    """What one run of a JSONL job did.

    `malformed` holds one ``"line N: why"`` text per input line that was skipped; `redone`
    counts lines sent again because they changed since they were answered (``redo_changed``);
    `ordered_copy` is the path of the sorted copy, when one was written. `usage` holds this
    run's tokens and cost, in all, per model and per key (masked); `budget_reached` is True
    when the run stopped taking new work at its `max_cost` (run again with a higher cap to
    continue). `requests`, `answered`, `rate_limited` (429s) and `request_errors` count the
    pool's tries during the run (every try, retries included).
    """

    done: int
    skipped: int
    failed: int
    malformed: tuple[str, ...] = field(default=())
    interrupted: bool = False
    elapsed: float = 0.0
    repaired: bool = False
    redone: int = 0
    ordered_copy: str | None = None
    usage: UsageReport = field(default_factory=UsageReport)
    budget_reached: bool = False
    max_cost: float | None = None
    requests: int = 0
    answered: int = 0
    rate_limited: int = 0
    request_errors: int = 0

    @property
    def ok(self) -> bool:
        """True when every item has a response and nothing was malformed, interrupted or
        left by the cost cap."""
        left = self.failed or self.malformed or self.interrupted or self.budget_reached
        return not left

    def __str__(self) -> str:
        text = (
            f"done {self.done}, skipped {self.skipped} (already done), failed {self.failed}, "
            f"malformed lines {len(self.malformed)} in {self.elapsed:.1f} s"
        )
        if self.redone:
            text += f"; {self.redone} changed lines sent again"
        if self.repaired:
            text += "; repaired a torn last line"
        if self.budget_reached:
            text += (
                f"; stopped at the cost cap of {usd(self.max_cost or 0)}: the rest was not sent "
                "(run again with a higher --max-cost to continue)"
            )
        elif self.interrupted:
            text += " (interrupted: run again to continue)"
        elif self.failed:
            text += " (run again to retry the failed items)"
        return "\n".join([text, *self.usage.lines()]) if self.usage.total.requests else text

    def to_dict(self) -> dict[str, object]:
        """The summary as JSON-ready values (``run --summary FILE``; the README documents the
        shape, whose ``version`` changes only when a field changes meaning or goes away)."""
        return {
            "version": 1,
            "lines": {
                "done": self.done,
                "failed": self.failed,
                "skipped": self.skipped,
                "malformed": len(self.malformed),
                "redone": self.redone,
            },
            **request_figures(
                self.requests,
                self.answered,
                self.request_errors,
                self.rate_limited,
                self.usage,
                self.elapsed,
            ),
            "max_cost": self.max_cost,
            "budget_reached": self.budget_reached,
            "interrupted": self.interrupted,
            "ok": self.ok,
        }


def with_pool_counts(summary: JobSummary, before: PoolStats, after: PoolStats) -> JobSummary:
    """`summary` with the pool's tries, answers, 429s and errors from `before` to `after`."""
    return dataclasses.replace(
        summary,
        requests=after.requests - before.requests,
        answered=after.successes - before.successes,
        rate_limited=after.rate_limited - before.rate_limited,
        request_errors=after.errors - before.errors,
    )


def run_jsonl_job(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    manager: APIKeyManager,
    endpoint: str | None = None,
    threads: int | None = None,
    ordered: bool = False,
    progress: bool = True,
    policy: RetryPolicy | None = None,
    redo_changed: bool = False,
    status_interval: float = 10.0,
    echo: IO[str] | None = None,
    use_async: bool = False,
    max_cost: float | None = None,
    flex: bool = False,
    fallback: bool = False,
) -> JobSummary:
    """Run every request of `input_path` not yet answered in `output_path`; see the package doc.

    `endpoint` forces one endpoint for every line (default: told by each body's fields).
    `ordered` also writes ``<output stem>.ordered<suffix>``, the results sorted by id.
    `redo_changed` sends lines again whose request changed since they were answered (their old
    answers are dropped); without it such a results file is refused.
    `progress` shows how the run goes on stderr: a progress bar on a terminal (or in Jupyter),
    else a plain status line every `status_interval` seconds and at the end (done/total,
    rate, 429s, failures), for logs that a bar's carriage returns would clutter.
    `echo` also gets every result line as it is written (the command line's ``-o -``); when
    its reader goes away (a closed pipe), the run stops as on Ctrl-C.
    `use_async` sends the requests as tasks of an event loop (its own, in a worker thread when
    this thread already runs one) instead of on threads; `threads` then counts tasks. On
    Ctrl-C the threads finish the requests in flight, the tasks are cancelled (their items
    stay undone for the next run).
    `max_cost` (USD) is a hard cap on what the run spends: each request's worst case (prompt
    + output allowance at its model's price) is reserved before it is sent, so the requests
    in flight together cannot pass it; when the next would, the run takes no new work,
    finishes what is in flight and reports `budget_reached` (a model without a known price
    gets an error line instead: price it under ``prices:`` in the config).
    `flex` sends every request with ``service_tier="flex"`` (batch prices, slower answers; a
    refusal for want of flex capacity is tried again later), `fallback` sends such a refused
    request again at once on the standard tier (see `flex.request_flex`).

    Raises `FileNotFoundError` / `IsADirectoryError` for a bad input path and
    `ResultsFileError` when the output (or the ordered copy's path) holds anything but results
    of this job; in every such case no file was changed and nothing was sent.
    """
    source, target = Path(input_path), Path(output_path)
    check_options(endpoint, status_interval)
    check_paths(source, target)
    started = time.monotonic()
    ordered_path = ordered_copy_path(target)
    if ordered:
        check_ordered_target(ordered_path)
    plan, existing = prepare_job(source, target, endpoint, redo_changed)
    meter = CostMeter(max_cost)
    options = SendOptions(
        threads, policy, progress, status_interval, use_async, meter, flex, fallback
    )
    before = manager.statistics()
    sink, interrupted = _send(plan, target, manager, options, echo)
    copy = write_ordered(target, ordered_path) if ordered and not interrupted else None
    elapsed = time.monotonic() - started
    summary = _summary(plan, existing, sink, meter, interrupted, elapsed, copy, max_cost)
    return with_pool_counts(summary, before, manager.statistics())


def _send(
    plan: JobPlan,
    target: Path,
    manager: APIKeyManager,
    options: SendOptions,
    echo: IO[str] | None,
) -> tuple[Sink, bool]:
    """Send the plan's items, appending their result lines to `target` (see `send_items`)."""
    with open(target, "a", encoding="utf-8") as output:
        return send_items(
            plan.items(), output, manager=manager, total=len(plan), options=options, echo=echo
        )


def _summary(
    plan: JobPlan,
    existing: ExistingResults,
    sink: Sink,
    meter: CostMeter,
    interrupted: bool,
    elapsed: float,
    ordered_copy: Path | None,
    max_cost: float | None,
) -> JobSummary:
    """The summary of a run: what planning found, what was sent, what it cost."""
    return JobSummary(
        done=sink.done,
        skipped=plan.skipped,
        failed=sink.failed,
        malformed=tuple(str(bad) for bad in plan.bad),
        interrupted=interrupted,
        elapsed=elapsed,
        repaired=existing.torn_at is not None,
        redone=len(plan.changed),
        ordered_copy=None if ordered_copy is None else str(ordered_copy),
        usage=meter.ledger.report(),
        budget_reached=meter.reached,
        max_cost=max_cost,
    )


def check_options(endpoint: str | None, status_interval: float) -> None:
    """Raise ValueError for an unknown endpoint or a status interval that is not > 0."""
    if endpoint is not None and endpoint not in RawRequest.PATHS:
        raise ValueError(f"endpoint must be one of {', '.join(RawRequest.PATHS)}")
    if not (isinstance(status_interval, int | float) and 0 < status_interval < math.inf):
        raise ValueError(f"status_interval must be a number of seconds > 0, not {status_interval}")


def ordered_copy_path(target: Path) -> Path:
    """Where ``--ordered`` writes the sorted copy of `target`: ``<stem>.ordered<suffix>``."""
    return target.with_name(target.stem + ".ordered" + target.suffix)
