"""`run_batch_job`: a `BatchJob` driven to the end, as ``run --mode batch`` does.

It submits, polls every `poll_interval` seconds (on the given clock, so tests pass time
without sleeping), collects finished batches as they finish, and once everything is collected
plans again the lines that failed in a way worth another try (expired, cancelled, a 5xx), at most
`max_retries` times each; with `BatchRunOptions.fallback`, the lines still failed after that
are sent online at the standard tier (`fallback`). Killed at any point, the same call picks up
from the journal. Each poll reports batches submitted / in progress / done, requests done and
the estimated saving against the standard tier.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from ..clock import Clock, SystemClock
from ..jobs.results import read_results
from ..keys import APIKeyManager
from ..stats import UsageReport
from .fallback import send_failed_online
from .job import BatchJob, BatchJobStatus
from .planner import BatchLimits

__all__ = ["BatchRunOptions", "BatchRunSummary", "run_batch_job"]

# A status line that did not change is printed again after this long.
UNCHANGED_STATUS_SECONDS = 60.0


@dataclass(frozen=True, kw_only=True)
class BatchRunOptions:
    """How `run_batch_job` drives a job: polling, retries, limits, progress and time.

    `fallback` sends the lines still failed or expired after `max_retries` resubmissions
    online at the standard tier instead of leaving them as errors.
    """

    poll_interval: float = 60.0
    max_retries: int = 2
    limits: BatchLimits | None = None
    progress: IO[str] | None = None
    clock: Clock | None = None
    fallback: bool = False


@dataclass(frozen=True)
class BatchRunSummary:
    """The end of a batch run: result lines by outcome, and the job's last status."""

    answered: int
    failed: int
    status: BatchJobStatus
    online: int = 0
    """Lines sent online by the fallback after their batch tries ran out."""
    usage: UsageReport = field(default_factory=UsageReport)
    """Tokens and cost of the answers collected from batches, per model and per key."""

    @property
    def ok(self) -> bool:
        """True when every line has an answer."""
        return self.failed == 0

    def __str__(self) -> str:
        online = f", {self.online} sent online (fallback)" if self.online else ""
        text = f"{self.answered} answered, {self.failed} failed{online} (batch API); {self.status}"
        # The per-model and per-key lines of the answers collected from batches.
        return "\n".join([text, *self.usage.lines()]) if self.usage.total.requests else text

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (``run --mode batch --summary FILE``): lines by outcome, batches, tokens
        and cost at the batch price per model and per key (masked), what the standard tier
        would have cost and the saving."""
        status = self.status
        return {
            "version": 1,
            "mode": "batch",
            "lines": {"answered": self.answered, "failed": self.failed, "online": self.online},
            "batches": {
                "created": status.created,
                "in_progress": status.in_progress,
                "done": status.done,
            },
            **self.usage.to_dict(),
            "standard_cost": status.standard_cost,
            "saved": status.saved,
            "ok": self.ok,
        }


def run_batch_job(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    manager: APIKeyManager | None = None,
    endpoint: str | None = None,
    options: BatchRunOptions | None = None,
) -> BatchRunSummary:
    """Send `input` through the Batch API until every line has a result line in `output`."""
    options = options or BatchRunOptions()
    clock = options.clock or SystemClock()
    report: Callable[[str], None] = _reporter(options.progress, clock)
    with BatchJob(input, output, manager=manager, endpoint=endpoint, limits=options.limits) as job:
        while True:
            created = job.submit()
            written = job.collect()
            status = job.status()
            # What this poll did, when it did something; then where the job stands.
            done = [f"{created} batches submitted"] if created else []
            done += [f"{written} results written"] if written else []
            report("; ".join([", ".join(done), str(status)]) if done else str(status))
            if status.finished:
                retried = job.retry_failed(options.max_retries)
                if not retried:
                    break
                report(f"{retried} failed lines planned again")
                continue
            clock.sleep(options.poll_interval)
        online = 0
        if options.fallback and not status.cancelled:
            online = send_failed_online(job)
            if online:
                report(f"{online} lines the batches could not answer sent online (fallback)")
        results = read_results(job.output)
        failed = len(results.failed)
        usage = job.usage()
        return BatchRunSummary(len(results.hashes) - failed, failed, status, online, usage)


def _reporter(stream: IO[str] | None, clock: Clock) -> Callable[[str], None]:
    """Print a status line when it says something new, and the same one again only after
    `UNCHANGED_STATUS_SECONDS` (a batch in progress for hours is not a line per poll)."""
    last: list[tuple[str, float]] = []

    def report(text: str) -> None:
        if stream is None:
            return
        now = clock.monotonic()
        if last and last[0][0] == text and now - last[0][1] < UNCHANGED_STATUS_SECONDS:
            return
        last[:] = [(text, now)]
        print(text, file=stream, flush=True)

    return report
