"""Sending the items of a JSONL job and writing one result line per item as each finishes.

The one sending loop of both runners: `run_jsonl_job` (one process, the results file itself)
and `run_shared_jsonl_job` (a worker among several, its own part file). Each result line is
written and flushed by the thread that finished the item, so a crash or an interrupt loses
nothing finished; progress goes to stderr as a bar on a terminal, else as status lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, Protocol

from tqdm.auto import tqdm

from ..costs import CostMeter
from ..errors import BudgetReachedError, RequestFailedError, redact
from ..flex import async_sender, sender
from ..keys import APIKeyManager
from ..models import RawRequest
from ..parallel import (
    MAX_ASYNC_CONCURRENCY,
    MAX_CONCURRENCY,
    InFlightTarget,
    acompleted,
    completed,
)
from ..prices import Usage, tier_of
from ..request import RetryPolicy
from .progress import Progress
from .results import result_line
from .source import Item

__all__ = ["Output", "SendOptions", "Sink", "send_items"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SendOptions:
    """How to send: `threads` in flight (None: from the pool's limits), retries, progress,
    whether as tasks of an event loop (`use_async`) rather than on threads, the run's
    `meter` (its tokens and cost, and its cost cap), and whether to send on the flex tier
    (`flex`; with `fallback`, a flex request refused for want of capacity goes again at once
    on the standard tier: see `flex.request_flex`)."""

    threads: int | None = None
    policy: RetryPolicy | None = None
    progress: bool = True
    status_interval: float = 10.0
    use_async: bool = False
    meter: CostMeter | None = None
    flex: bool = False
    fallback: bool = False


class Output(Protocol):
    """Where result lines go: a text file, or a worker's part file."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class Sink:
    """Appends result lines from worker threads, one whole line per write, and counts them.

    With `echo`, each line also goes there; if its reader goes away (a closed pipe),
    `echo_broken` is set and the echo stops. `written`, when given, is called after each line
    is flushed, outside the lock, in the thread that wrote it.
    """

    def __init__(
        self,
        output: Output,
        progress: tqdm[Any],
        echo: IO[str] | None = None,
        written: Callable[[Item], None] | None = None,
    ) -> None:
        self._output = output
        self._echo = echo
        self._written = written
        self._lock = threading.Lock()
        self.bar = progress
        self.done = self.failed = 0
        self.echo_broken = False

    def write(self, item: Item, outcome: str, value: Any, cost: float | None = None) -> None:
        line = result_line(item.item_id, item.request_hash, item.metadata, outcome, value, cost)
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
        if self._written is not None:
            self._written(item)

    def write_error(self, item: Item, exc: Exception) -> None:
        """The error line of an item that failed for good (keys masked)."""
        code = exc.status_code if isinstance(exc, RequestFailedError) else None
        error = {"message": redact(str(exc)), "type": type(exc).__name__}
        self.write(item, "error", {**error, "status_code": code})


def send_items(
    items: Iterable[Item],
    output: Output,
    *,
    manager: APIKeyManager,
    total: int,
    options: SendOptions,
    echo: IO[str] | None = None,
    written: Callable[[Item], None] | None = None,
    wanted: Callable[[Item], bool] | None = None,
    refused: Callable[[Item], Exception | None] | None = None,
) -> tuple[Sink, bool]:
    """Send `items` (drawn lazily), append a result line to `output` for each as it ends.

    `total` is what the progress display counts against. `written` is called after each
    line is flushed (see `Sink`); an item for which `wanted` says False when its turn comes
    is left unsent, with no line; one for which `refused` gives an exception is left unsent
    with that error as its line. Returns the sink (its counts) and whether the run was
    interrupted (Ctrl-C, SIGTERM, or `echo`'s reader gone); requests in flight are finished
    and written either way. When the options' `meter` reaches its cost cap the run stops
    taking new work the same way, without counting as interrupted; items refused by the cap
    get no line. An error outside the requests (writing a line) ends the run: it
    is raised once the requests in flight are finished.
    """
    window, workers = _window(options, manager)
    progress = Progress(manager, total, options, workers=_workers_now(options, window))
    sink = Sink(output, progress.bar, echo, written)
    progress.start(sink)
    sender = _Sender(manager, options, sink, wanted, refused)
    meter = options.meter
    interrupted = False
    try:
        if options.use_async:
            finished = _on_a_loop(_drive_tasks(sender.asend, items, window, progress.one_done))
        else:
            finished = _drive_threads(sender.send, items, window, workers, progress.one_done)
        if not finished and not (meter is not None and meter.reached):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = True
        if options.use_async:
            logger.warning("interrupted: cancelling the requests in flight (sent again next run)")
        else:
            logger.warning("interrupted: finishing the requests in flight")
    finally:
        progress.close()
    return sink, interrupted


class _Sender:
    """Sends one item on the pool (online or flex, as `options` say) and writes its line:
    the answer, the error, or none for an item `wanted` passes over or the cost cap refuses."""

    def __init__(
        self,
        manager: APIKeyManager,
        options: SendOptions,
        sink: Sink,
        wanted: Callable[[Item], bool] | None,
        refused: Callable[[Item], Exception | None] | None,
    ) -> None:
        self._manager = manager
        self._options = options
        self._sink = sink
        self._wanted = wanted
        self._refused = refused
        self._send = sender(options.flex, options.fallback)
        self._asend = async_sender(options.flex, options.fallback)
        # On the flex tier the caller's own policy (None: the tier's default); online, the run's.
        policy = options.policy if options.flex else options.policy or RetryPolicy()
        self._send_options: dict[str, Any] = {
            "manager": manager,
            "policy": policy,
            "raw": True,
            "cache": False,
            "meter": options.meter,
        }

    def _request(self, item: Item) -> RawRequest | None:
        """The item's request, or None when it is not to be sent (`wanted`, `refused`)."""
        if self._wanted is not None and not self._wanted(item):
            return None
        refusal = self._refused(item) if self._refused is not None else None
        if refusal is not None:
            self._sink.write_error(item, refusal)
            return None
        return RawRequest(item.endpoint, item.sendable_body())

    def send(self, item: Item) -> None:
        """Send `item` on this thread and write its line."""
        model = self._request(item)
        if model is None:
            return
        try:
            response = self._send(model, **self._send_options)
        except Exception as exc:
            self._failed(item, exc)
        else:
            self._answered(item, model, response)

    async def asend(self, item: Item) -> None:
        """Send `item` as a task of the running loop and write its line."""
        model = self._request(item)
        if model is None:
            return
        try:
            response = await self._asend(model, **self._send_options)
        except Exception as exc:
            self._failed(item, exc)
        else:
            self._answered(item, model, response)

    def _answered(self, item: Item, model: RawRequest, response: Any) -> None:
        self._sink.write(item, "response", response, _cost_of(self._manager, model, response))

    def _failed(self, item: Item, exc: Exception) -> None:
        if isinstance(exc, BudgetReachedError):
            return  # not sent: no line, so that a run with a higher cap sends it
        self._sink.write_error(item, exc)


def _window(options: SendOptions, manager: APIKeyManager) -> tuple[int | InFlightTarget, int]:
    """The run's window of requests in flight (a count, or a target that follows the pool's
    rate times its response time) and how many threads send."""
    if options.threads:  # a fixed count, a second round queued so that no thread idles
        threads = options.threads
        return (threads, threads) if options.use_async else (threads * 2, threads)
    in_flight = InFlightTarget(
        manager, MAX_ASYNC_CONCURRENCY if options.use_async else MAX_CONCURRENCY
    )
    return in_flight, in_flight.cap


def _workers_now(options: SendOptions, window: int | InFlightTarget) -> Callable[[], int]:
    """How many requests the run may keep in flight now (what `Progress` compares with)."""
    if options.threads:
        count = options.threads
        return lambda: count
    assert isinstance(window, InFlightTarget)
    return window


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
        for _, future in completed(executor, send, items, window):
            future.result()  # `send` catches the request's errors: any other one ends the run
            if not one_done():
                return False
        return True
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
        async for _, task in done:
            task.result()  # `send` catches the request's errors: any other one ends the run
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


def _cost_of(manager: APIKeyManager, model: RawRequest, response: Any) -> float | None:
    """USD of one answer, at its model's price and tier (None: unknown)."""
    usage = Usage.of(response)
    name = model.model_name()
    if usage is None or name is None:
        return None
    cost = manager.prices.cost_of(name, usage, tier_of(response, model.body))
    return None if cost is None else float(cost)
