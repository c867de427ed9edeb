"""Running a JSONL job: send every line not yet answered, append one result line per item.

Each result line is written and flushed by the worker that finished the item, so a crash or an
interrupt loses nothing finished. See the package docstring for the whole contract.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

from ..errors import RequestFailedError, redact
from ..keys import APIKeyManager
from ..models import RawRequest
from ..parallel import InFlightTarget, completed
from ..request import RetryPolicy, request_openai_api
from .plan import JobPlan, plan_job
from .results import (
    ExistingResults,
    ResultsFileError,
    check_ordered_target,
    read_results,
    result_line,
    write_ordered,
)
from .source import Item

__all__ = ["JobSummary", "run_jsonl_job"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobSummary:
    """What one run of a JSONL job did.

    `malformed` holds one ``"line N: why"`` text per input line that was skipped; `redone`
    counts lines sent again because they changed since they were answered (``redo_changed``);
    `ordered_copy` is the path of the sorted copy, when one was written.
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

    @property
    def ok(self) -> bool:
        """True when every item has a response and nothing was malformed or interrupted."""
        return not self.failed and not self.malformed and not self.interrupted

    def __str__(self) -> str:
        text = (
            f"done {self.done}, skipped {self.skipped} (already done), failed {self.failed}, "
            f"malformed lines {len(self.malformed)} in {self.elapsed:.1f} s"
        )
        if self.redone:
            text += f"; {self.redone} changed lines sent again"
        if self.repaired:
            text += "; repaired a torn last line"
        if self.interrupted:
            text += " (interrupted: run again to continue)"
        elif self.failed:
            text += " (run again to retry the failed items)"
        return text


class _Sink:
    """Appends result lines from worker threads, one whole line per write, and counts them."""

    def __init__(self, output: IO[str], progress: tqdm[Any]) -> None:
        self._output = output
        self._lock = threading.Lock()
        self.bar = progress
        self.done = self.failed = 0

    def write(self, item: Item, outcome: str, value: Any) -> None:
        line = result_line(item.item_id, item.request_hash, item.metadata, outcome, value)
        with self._lock:
            self._output.write(line)
            self._output.flush()
            if outcome == "error":
                self.failed += 1
            else:
                self.done += 1
            self.bar.update(1)


def _check_paths(source: Path, target: Path) -> None:
    if not source.exists():
        raise FileNotFoundError(f"input file not found: {source}")
    if source.is_dir():
        raise IsADirectoryError(f"input is a directory, not a JSONL file: {source}")
    if target.exists() and os.path.samefile(source, target):
        raise ResultsFileError(
            f"{target}: the output is the input file; it was left unchanged "
            "(choose another output file)"
        )


def _check_plan(plan: JobPlan, existing: ExistingResults, redo_changed: bool) -> None:
    """Refuse a results file that answers other requests than these; it stays as it is."""
    target = existing.path
    if len(existing) and not plan.matched:
        raise ResultsFileError(
            f"{target}: none of its {len(existing)} results answers a request of "
            f"{plan.source} as it is now (results of another job, or every line changed); "
            "it was left unchanged (choose another output file)"
        )
    if plan.changed and not redo_changed:
        line, item_id = plan.changed[0]
        raise ResultsFileError(
            f"{target}: {len(plan.changed)} requests changed since they were answered "
            f"(first: line {line}, id {item_id!r}); it was left unchanged (run with "
            "--redo-changed to send them again and drop their old answers, or choose another "
            "output file)"
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
) -> JobSummary:
    """Run every request of `input_path` not yet answered in `output_path`; see the package doc.

    `endpoint` forces one endpoint for every line (default: told by each body's fields).
    `ordered` also writes ``<output stem>.ordered<suffix>``, the results sorted by id.
    `redo_changed` sends lines again whose request changed since they were answered (their old
    answers are dropped); without it such a results file is refused.

    Raises `FileNotFoundError` / `IsADirectoryError` for a bad input path and
    `ResultsFileError` when the output (or the ordered copy's path) holds anything but results
    of this job; in every such case no file was changed and nothing was sent.
    """
    source, target = Path(input_path), Path(output_path)
    if endpoint is not None and endpoint not in RawRequest.PATHS:
        raise ValueError(f"endpoint must be one of {', '.join(RawRequest.PATHS)}")
    _check_paths(source, target)
    started = time.monotonic()
    existing = read_results(target)
    ordered_path = target.with_name(target.stem + ".ordered" + target.suffix)
    if ordered:
        check_ordered_target(ordered_path)
    plan = plan_job(source, existing, endpoint)
    _check_plan(plan, existing, redo_changed)
    existing.repair_and_drop(plan.drop)
    for bad in plan.bad:
        logger.info("skipping %s", bad)
    policy = policy or RetryPolicy()
    window: int | InFlightTarget
    if threads:  # a fixed count, a second round queued so that no thread idles
        window, workers = threads * 2, threads
    else:  # in flight: the pool's rate times its response time, as the run goes
        in_flight = InFlightTarget(manager)
        window, workers = in_flight, in_flight.cap
    baseline = manager.statistics()
    bar = tqdm(
        total=len(plan), desc="requests", unit="req", disable=not progress, dynamic_ncols=True
    )
    interrupted = False
    with open(target, "a", encoding="utf-8") as output:
        sink = _Sink(output, bar)

        def send(item: Item) -> None:
            try:
                model = RawRequest(item.endpoint, item.sendable_body())
                response = request_openai_api(
                    model, manager=manager, policy=policy, raw=True, cache=False
                )
            except Exception as exc:
                status = exc.status_code if isinstance(exc, RequestFailedError) else None
                error = {"message": redact(str(exc)), "type": type(exc).__name__}
                sink.write(item, "error", {**error, "status_code": status})
            else:
                sink.write(item, "response", response)

        executor = ThreadPoolExecutor(workers, thread_name_prefix="jsonl")
        last = 0.0
        try:
            for _ in completed(executor, send, plan.items(), window):
                now = time.monotonic()
                if now - last > 0.5:
                    last = now
                    _postfix(bar, manager, baseline, sink, now - started)
        except KeyboardInterrupt:
            interrupted = True
            logger.warning("interrupted: finishing the requests in flight")
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            _postfix(bar, manager, baseline, sink, time.monotonic() - started)
            bar.close()
    copy = write_ordered(target, ordered_path) if ordered and not interrupted else None
    return JobSummary(
        done=sink.done,
        skipped=plan.skipped,
        failed=sink.failed,
        malformed=tuple(str(bad) for bad in plan.bad),
        interrupted=interrupted,
        elapsed=time.monotonic() - started,
        repaired=existing.torn_at is not None,
        redone=len(plan.changed),
        ordered_copy=None if copy is None else str(copy),
    )


def _postfix(
    bar: tqdm[Any], manager: APIKeyManager, baseline: Any, sink: _Sink, elapsed: float
) -> None:
    stats = manager.statistics()
    bar.set_postfix(
        req_s=f"{(stats.requests - baseline.requests) / max(elapsed, 1e-9):.1f}",
        tokens=stats.tokens - baseline.tokens,
        r429=stats.rate_limited - baseline.rate_limited,
        failed=sink.failed,
        refresh=False,
    )
