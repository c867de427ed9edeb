"""Running a JSONL job: send every line not yet answered, append one result line per item.

Each result line is written and flushed by the worker that finished the item, so a crash or an
interrupt loses nothing finished. See the package docstring for the whole contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

from ..errors import RequestFailedError, redact
from ..keys import APIKeyManager
from ..models import RawRequest
from ..parallel import (
    MAX_ASYNC_CONCURRENCY,
    MAX_CONCURRENCY,
    InFlightTarget,
    acompleted,
    completed,
)
from ..request import RetryPolicy, arequest_openai_api, request_openai_api
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
    """Appends result lines from worker threads, one whole line per write, and counts them.

    With `echo`, each line also goes there; if its reader goes away (a closed pipe),
    `echo_broken` is set and the echo stops.
    """

    def __init__(self, output: IO[str], progress: tqdm[Any], echo: IO[str] | None) -> None:
        self._output = output
        self._echo = echo
        self._lock = threading.Lock()
        self.bar = progress
        self.done = self.failed = 0
        self.echo_broken = False

    def write(self, item: Item, outcome: str, value: Any) -> None:
        line = result_line(item.item_id, item.request_hash, item.metadata, outcome, value)
        with self._lock:
            self._output.write(line)
            self._output.flush()
            if self._echo is not None and not self.echo_broken:
                try:
                    self._echo.write(line)
                    self._echo.flush()
                except BrokenPipeError:
                    self.echo_broken = True
            if outcome == "error":
                self.failed += 1
            else:
                self.done += 1
            self.bar.update(1)

    def write_error(self, item: Item, exc: Exception) -> None:
        """The error line of an item that failed for good (keys masked)."""
        code = exc.status_code if isinstance(exc, RequestFailedError) else None
        error = {"message": redact(str(exc)), "type": type(exc).__name__}
        self.write(item, "error", {**error, "status_code": code})


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
    status_interval: float = 10.0,
    echo: IO[str] | None = None,
    use_async: bool = False,
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

    Raises `FileNotFoundError` / `IsADirectoryError` for a bad input path and
    `ResultsFileError` when the output (or the ordered copy's path) holds anything but results
    of this job; in every such case no file was changed and nothing was sent.
    """
    source, target = Path(input_path), Path(output_path)
    if endpoint is not None and endpoint not in RawRequest.PATHS:
        raise ValueError(f"endpoint must be one of {', '.join(RawRequest.PATHS)}")
    if not (isinstance(status_interval, int | float) and 0 < status_interval < math.inf):
        raise ValueError(f"status_interval must be a number of seconds > 0, not {status_interval}")
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
        window, workers = (threads, threads) if use_async else (threads * 2, threads)
    else:  # in flight: the pool's rate times its response time, as the run goes
        in_flight = InFlightTarget(manager, MAX_ASYNC_CONCURRENCY if use_async else MAX_CONCURRENCY)
        window, workers = in_flight, in_flight.cap
    baseline = manager.statistics()
    show_bar = progress and _interactive(sys.stderr)
    bar = tqdm(
        total=len(plan), desc="requests", unit="req", disable=not show_bar, dynamic_ncols=True
    )
    interrupted = False
    with open(target, "a", encoding="utf-8") as output:
        sink = _Sink(output, bar, echo)
        status = None
        if progress and not show_bar:
            status = _StatusLines(
                lambda: _status_text(
                    len(plan), manager, baseline, sink, time.monotonic() - started
                ),
                status_interval,
            )

        last = 0.0

        def one_done() -> bool:
            """After each item: refresh the bar now and then; False to stop the run."""
            nonlocal last
            now = time.monotonic()
            if now - last > 0.5:
                last = now
                _postfix(bar, manager, baseline, sink, now - started)
            return not sink.echo_broken  # nobody reads the results any more: stop as Ctrl-C

        def send(item: Item) -> None:
            try:
                model = RawRequest(item.endpoint, item.sendable_body())
                response = request_openai_api(
                    model, manager=manager, policy=policy, raw=True, cache=False
                )
            except Exception as exc:
                sink.write_error(item, exc)
            else:
                sink.write(item, "response", response)

        async def asend(item: Item) -> None:
            try:
                model = RawRequest(item.endpoint, item.sendable_body())
                response = await arequest_openai_api(
                    model, manager=manager, policy=policy, raw=True, cache=False
                )
            except Exception as exc:
                sink.write_error(item, exc)
            else:
                sink.write(item, "response", response)

        try:
            if use_async:
                finished = _on_a_loop(_drive_tasks(asend, plan.items(), window, one_done))
            else:
                finished = _drive_threads(send, plan.items(), window, workers, one_done)
            if not finished:
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            interrupted = True
            logger.warning("interrupted: finishing the requests in flight")
        finally:
            _postfix(bar, manager, baseline, sink, time.monotonic() - started)
            bar.close()
            if status is not None:
                status.close()
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


def _drive_threads(
    send: Callable[[Item], None],
    items: Iterable[Item],
    window: int | InFlightTarget,
    workers: int,
    one_done: Callable[[], bool],
) -> bool:
    """Send every item on `workers` threads; False when `one_done` asked to stop."""
    executor = ThreadPoolExecutor(workers, thread_name_prefix="jsonl")
    try:
        return all(one_done() for _ in completed(executor, send, items, window))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


async def _drive_tasks(
    send: Callable[[Item], Awaitable[None]],
    items: Iterable[Item],
    window: int | InFlightTarget,
    one_done: Callable[[], bool],
) -> bool:
    """Send every item as a task of the running loop; False when `one_done` asked to stop."""
    done = acompleted(send, items, window)
    async with contextlib.aclosing(done):
        async for _ in done:
            if not one_done():
                return False
    return True


def _on_a_loop(work: Coroutine[Any, Any, bool]) -> bool:
    """Run `work` on a new event loop: here, or in a worker thread if this thread runs one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    with ThreadPoolExecutor(1, thread_name_prefix="jsonl-loop") as thread:
        return thread.submit(asyncio.run, work).result()


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


def _status_text(
    total: int, manager: APIKeyManager, baseline: Any, sink: _Sink, elapsed: float
) -> str:
    stats = manager.statistics()
    finished = sink.done + sink.failed
    return (
        f"{finished}/{total} requests finished, {sink.failed} failed, "
        f"{finished / max(elapsed, 1e-9):.1f} req/s, "
        f"{stats.rate_limited - baseline.rate_limited} rate-limited (429), "
        f"{stats.tokens - baseline.tokens} tokens, {elapsed:.0f} s"
    )
