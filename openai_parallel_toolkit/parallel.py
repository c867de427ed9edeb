"""`multi_process_one` and the ordered parallel map under it, and their asyncio twins.

Items run on a thread pool (requests spend their time waiting on the network and the rate
limiter, not on the CPU), or as tasks of the running event loop (`aparallel_map`,
`amulti_process_one`); results come back in input order. A failed item never loses the
others: every item runs to its end before failures are reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import itertools
import math
import queue
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .cache import RequestCache
from .costs import CostMeter
from .errors import ToolkitError, redact
from .flex import async_sender, sender
from .keys import APIKeyManager, KeyState, resolve_manager, use_manager
from .models import OpenAIModel, check_generate_signature, sends_async
from .runstate import logs_above
from .runwatch import ItemBar, RunWatch

if TYPE_CHECKING:  # the batch package imports this module: imported where used
    from .batch.library import SendMode
    from .batch.runner import BatchRunOptions

__all__ = [
    "BatchError",
    "InFlightTarget",
    "acompleted",
    "amulti_process_one",
    "aparallel_map",
    "completed",
    "default_concurrency",
    "multi_process_one",
    "parallel_map",
    "pool_watch",
    "run_meter",
]

T = TypeVar("T")
R = TypeVar("R")

OnError = Literal["raise", "none", "return"]

# In-flight requests wanted per second of rate limit: covers a typical response time.
EXPECTED_LATENCY_SECONDS = 2.0
MIN_CONCURRENCY = 8
MAX_CONCURRENCY = 1024
# Tasks cost a few kilobytes where threads cost stacks and switches: the asyncio engine may keep
# far more requests in flight (30,000 RPM at 3 s per answer is 1,500).
MAX_ASYNC_CONCURRENCY = 4096
UNKNOWN_LIMIT_CONCURRENCY_PER_KEY = 8
# `InFlightTarget` looks at the pool again this often.
TARGET_CHECK_SECONDS = 0.5
# While nothing ends, a growing window is looked at this often: before the first of a run of
# slow answers arrives, the requests in flight must keep growing with the time waited.
WINDOW_CHECK_SECONDS = 0.1

_nested: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "openai_parallel_toolkit_nested", default=False
)
# Set by a ParallelToolkit run: the one bounded pool that multi_process_one calls inside its
# hooks share, instead of each starting threads of its own (32 files x 40 items = 1,000+).
_shared_executor: contextvars.ContextVar[Executor | None] = contextvars.ContextVar(
    "openai_parallel_toolkit_shared_executor", default=None
)


class BatchError(ToolkitError):
    """Some items of a batch failed. Every other item finished first.

    `results` holds each item's result in input order (None where it failed) and `errors`
    maps the index of each failed item to its exception.
    """

    def __init__(self, results: list[Any], errors: dict[int, BaseException]):
        self.results = results
        self.errors = errors
        first = min(errors)
        detail = redact(f"{type(errors[first]).__name__}: {errors[first]}")
        super().__init__(
            f"{len(errors)} of {len(results)} items failed (first: item {first}: {detail})"
        )


def default_concurrency(manager: APIKeyManager, *, cap: int = MAX_CONCURRENCY) -> int:
    """Requests to keep in flight: the pool's rate times its response time, within bounds.

    With known limits that is ``requests per second x seconds per answer`` (the pool's observed
    response time plus a quarter, or the age of the oldest request in flight up to twice that
    time; before any answer 2 s, or that age plus `TARGET_CHECK_SECONDS` when longer) plus
    what servers say they hold beyond that pace (`KeyStats.surplus_requests`); keys with
    unknown limits count 8 each.
    Clamped to 8..`cap`: threads mostly wait on the network and on the limiter.
    """
    stats = manager.statistics()
    oldest = stats.oldest_in_flight or 0.0
    if stats.latency is None:
        # No answer yet: they take at least as long as the oldest request has waited, and
        # longer still by the time the count is looked at again.
        seconds = max(EXPECTED_LATENCY_SECONDS, oldest + TARGET_CHECK_SECONDS)
    else:
        # The average hides the slow answers of a jittery server, which hold threads longest;
        # the oldest request still waiting shows them (bounded: one hung request is no trend).
        seconds = max(stats.latency * 1.25, min(oldest, stats.latency * 2.0))
    wanted = 0.0
    seen: set[str] = set()
    for key in stats.keys:
        if key.state is KeyState.REMOVED or key.group in seen:
            continue
        seen.add(key.group)
        if key.requests_per_min:
            # What the server holds beyond the pace can all be sent at once.
            wanted += key.requests_per_min / 60.0 * seconds + key.surplus_requests
        else:
            wanted += UNKNOWN_LIMIT_CONCURRENCY_PER_KEY
    return int(max(MIN_CONCURRENCY, min(cap, math.ceil(wanted))))


class InFlightTarget:
    """`default_concurrency` of a pool, looked at again every `TARGET_CHECK_SECONDS` in a run.

    Used as the window of `completed`: the requests in flight follow the limits learned, the
    response time observed (a run of 5 s answers is not held to a count sized for 2 s) and the
    capacity servers report beyond their rate, up to `cap` threads.
    """

    def __init__(self, manager: APIKeyManager, cap: int = MAX_CONCURRENCY) -> None:
        self._manager = manager
        self.cap = cap
        self._value = default_concurrency(manager, cap=cap)
        self._checked = time.monotonic()

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self._checked >= TARGET_CHECK_SECONDS:
            self._checked = now
            self._value = default_concurrency(self._manager, cap=self.cap)
        return self._value

    def __repr__(self) -> str:
        return f"<InFlightTarget {self._value} of at most {self.cap}>"


def parallel_map(
    function: Callable[[T], R],
    items: Sequence[T],
    *,
    threads: int | InFlightTarget,
    on_error: OnError = "raise",
    progress: bool | None = None,
    desc: str | None = None,
    watch: RunWatch | None = None,
) -> list[Any]:
    """Apply `function` to every item on `threads` threads; results in input order.

    `threads` is a count, or an `InFlightTarget` that sizes the work in flight as the run goes.
    The caller's context (active key pool and cache) is carried into the workers. Failures
    follow `on_error`: "raise" a `BatchError` once all items ended, or put None ("none") or the
    exception itself ("return") in the failed item's place. `progress=None` shows a bar unless
    this runs inside another toolkit job; `watch` puts a run's figures beside it (requests/s,
    tokens/s, 429s, keys healthy / cooling / removed, cost, the ceiling in use).
    """
    _check_on_error(on_error)
    if isinstance(threads, int) and threads < 1:
        raise ValueError("threads must be >= 1")
    results: list[Any] = [None] * len(items)
    errors: dict[int, BaseException] = {}
    bar = _progress_bar(len(items), progress, desc, watch)

    def run_indexed(pair: tuple[int, T]) -> R:
        nested = _nested.set(True)
        # A call nested one level deeper must not queue behind itself on the shared pool.
        shared = _shared_executor.set(None)
        try:
            return function(pair[1])
        finally:
            _shared_executor.reset(shared)
            _nested.reset(nested)

    with contextlib.ExitStack() as stack:
        executor = _shared_executor.get()
        limit = threads if isinstance(threads, int) else threads.cap
        if executor is None:
            workers = min(limit, max(1, len(items)))
            executor = stack.enter_context(ThreadPoolExecutor(max_workers=workers))
        stack.callback(bar.close)
        stack.enter_context(logs_above(bar.bar))  # warnings above the bar, not glued to it
        pairs = enumerate(items)
        # A fixed count keeps a second round queued so no thread idles between items.
        window = threads * 2 if isinstance(threads, int) else threads
        for (index, _), future in completed(executor, run_indexed, pairs, window):
            exc = future.exception()
            _record(results, errors, index, exc, None if exc else future.result(), on_error)
            bar.one_done(failed=exc is not None)
    if errors and on_error == "raise":
        raise BatchError(results, errors)
    return results


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "none", "return"):
        raise ValueError(f"on_error must be 'raise', 'none' or 'return', not {on_error!r}")


def _progress_bar(
    total: int, progress: bool | None, desc: str | None, watch: RunWatch | None
) -> ItemBar:
    """A bar, unless `progress` is False, or None inside another toolkit job."""
    show = (not _nested.get()) if progress is None else progress
    return ItemBar(total, show=show, desc=desc, figures=watch)


def _record(
    results: list[Any],
    errors: dict[int, BaseException],
    index: int,
    exc: BaseException | None,
    value: Any,
    on_error: OnError,
) -> None:
    """Put one item's outcome in its place: its value, or its error (and, for "return", the
    exception itself in the results)."""
    if exc is None:
        results[index] = value
        return
    errors[index] = exc
    if on_error == "return":
        results[index] = exc


async def aparallel_map(
    function: Callable[[T], Awaitable[R]],
    items: Sequence[T],
    *,
    concurrency: int | InFlightTarget,
    on_error: OnError = "raise",
    progress: bool | None = None,
    desc: str | None = None,
    watch: RunWatch | None = None,
) -> list[Any]:
    """``await aparallel_map(coroutine_function, items, concurrency=...)``: `parallel_map` for
    coroutines; results in input order.

    At most `concurrency` calls run at once as tasks of the running loop (a count, or an
    `InFlightTarget` that sizes them as the run goes); items are drawn lazily, so a huge input
    never becomes a task each at once. Each task runs in a copy of the caller's context
    (active key pool and cache). Failures, `progress` and `watch` as in `parallel_map`. Cancelling
    the call cancels the running tasks and waits for them to let go of what they hold (a
    request's reservation goes back to the pool) before the cancellation goes on.
    """
    _check_on_error(on_error)
    if isinstance(concurrency, int) and concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    results: list[Any] = [None] * len(items)
    errors: dict[int, BaseException] = {}

    async def run_indexed(pair: tuple[int, T]) -> R:
        _nested.set(True)  # the task's own context: the caller's stays as it was
        return await function(pair[1])

    bar = _progress_bar(len(items), progress, desc, watch)
    try:
        with logs_above(bar.bar):
            done = acompleted(run_indexed, enumerate(items), concurrency)
            async with contextlib.aclosing(done):
                async for (index, _), task in done:
                    exc = asyncio.CancelledError() if task.cancelled() else task.exception()
                    _record(results, errors, index, exc, None if exc else task.result(), on_error)
                    bar.one_done(failed=exc is not None)
    finally:
        bar.close()
    if errors and on_error == "raise":
        raise BatchError(results, errors)
    return results


async def acompleted(
    function: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    window: int | Callable[[], int],
) -> AsyncGenerator[tuple[T, asyncio.Future[R]], None]:
    """`completed` for coroutines: a task per item, at most `window` running; yield them as
    they end.

    Items are drawn from `items` lazily; each task runs in a copy of the caller's context.
    Leaving the loop early (use ``contextlib.aclosing``) or cancelling it cancels the running
    tasks and waits for them to let go of what they hold (a request's reservation goes back
    to the pool at once).
    """
    source = iter(items)
    running: dict[asyncio.Future[R], T] = {}
    # Finished tasks arrive on a queue: O(1) per item, where asyncio.wait would walk every
    # running task on each call (thousands at the top rate-limit tiers). A window that may
    # grow also gets a tick (None) every WINDOW_CHECK_SECONDS: no timer per item.
    finished: asyncio.Queue[asyncio.Future[R] | None] = asyncio.Queue()
    ticker: asyncio.TimerHandle | None = None

    def tick() -> None:
        nonlocal ticker
        finished.put_nowait(None)
        ticker = asyncio.get_running_loop().call_later(WINDOW_CHECK_SECONDS, tick)

    def submit(count: int) -> None:
        for item in itertools.islice(source, count):
            task = asyncio.ensure_future(function(item))
            running[task] = item
            task.add_done_callback(finished.put_nowait)

    size: Callable[[], int] = window if callable(window) else (lambda: window)
    submit(size())
    if callable(window):
        ticker = asyncio.get_running_loop().call_later(WINDOW_CHECK_SECONDS, tick)
    try:
        while running:
            task = await finished.get()
            if task is not None:
                yield running.pop(task), task
            submit(max(0, size() - len(running)))  # after a tick: the window may have grown
    finally:
        if ticker is not None:
            ticker.cancel()
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)


def completed(
    executor: Executor,
    function: Callable[[T], R],
    items: Iterable[T],
    window: int | Callable[[], int],
) -> Iterator[tuple[T, Future[R]]]:
    """Submit `function(item)` for each item, at most `window` ahead; yield them as they end.

    `window` is a count, or a callable asked for the count as items end, and every
    `WINDOW_CHECK_SECONDS` while none does (`InFlightTarget`).
    Items are drawn from `items` lazily, so a huge or endless input is never all queued. Each
    call runs in a copy of the caller's context (active pool, cache). Leaving the loop early
    (an exception, Ctrl-C, `break`) cancels what has not started yet.
    """
    source = iter(items)
    futures: dict[Future[R], T] = {}
    # Finished futures arrive on a queue: O(1) per item, where concurrent.futures.wait would
    # walk every pending future on each call (a measurable cost at hundreds of requests/s).
    finished: queue.SimpleQueue[Future[R]] = queue.SimpleQueue()

    def submit(count: int) -> None:
        for item in itertools.islice(source, count):
            future = executor.submit(contextvars.copy_context().run, function, item)
            futures[future] = item
            future.add_done_callback(finished.put)

    size = window if callable(window) else (lambda: window)
    submit(size())
    try:
        while futures:
            try:
                # A timeout keeps the wait interruptible by Ctrl-C on every platform.
                future = finished.get(timeout=WINDOW_CHECK_SECONDS)
            except queue.Empty:
                submit(max(0, size() - len(futures)))  # the window may have grown
                continue
            yield futures.pop(future), future
            submit(max(0, size() - len(futures)))
    finally:
        for future in futures:
            future.cancel()


def _model_builder(
    model_class: type[OpenAIModel], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[[Sequence[Any]], OpenAIModel]:
    """Build models from (prompt, content, *more) tuples, the extras in the class's own order."""
    parameters = [
        p.name
        for p in inspect.signature(model_class).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.name not in ("prompt", "content")
    ]

    def build(item: Sequence[Any]) -> OpenAIModel:
        if isinstance(item, str) or len(item) < 2:
            raise TypeError(f"each item must be a tuple (prompt, content, ...), got {item!r}")
        extras = [*item[2:], *args]
        if len(extras) > len(parameters):
            raise TypeError(
                f"{model_class.__name__} takes {len(parameters)} parameters after prompt and "
                f"content ({', '.join(parameters) or 'none'}), got {len(extras)}"
            )
        named = dict(zip(parameters, extras, strict=False))
        clash = named.keys() & kwargs.keys()
        if clash:
            raise TypeError(f"{', '.join(sorted(clash))} given both in an item and as a keyword")
        # OpenAIModel declares no constructor; the classes given here take prompt= and content=
        # (as documented), which the call checks at run time.
        factory: Callable[..., OpenAIModel] = model_class
        return factory(prompt=item[0], content=item[1], **named, **kwargs)

    return build


def _prepare(
    data: Sequence[Sequence[Any]],
    openai_model_class: type[OpenAIModel],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    manager: APIKeyManager | None,
    sending_async: bool,
) -> tuple[list[OpenAIModel], APIKeyManager]:
    """The models of `data` (argument errors surface before any request) and the pool."""
    build = _model_builder(openai_model_class, args, kwargs)
    models = [build(item) for item in data]
    # An old generate(self) fails once, not per item (unless agenerate is what will be sent).
    if models and not (sending_async and sends_async(models[0])):
        check_generate_signature(models[0])
    return models, resolve_manager(manager)


def pool_watch(
    pool: APIKeyManager, total: int, meter: CostMeter, count: int | InFlightTarget
) -> RunWatch:
    """The `RunWatch` of a call sending `total` requests on `pool`, at most `count` in flight,
    its answers counted in `meter`."""
    workers = count if callable(count) else lambda: count
    return RunWatch(pool, total, ledger=meter.ledger, workers=workers)


def run_meter(max_cost: float | Decimal | None, meter: CostMeter | None) -> CostMeter | None:
    """The run's `CostMeter`: `meter` as given, else one capped at `max_cost` (None: none)."""
    if meter is not None and max_cost is not None:
        raise ValueError("give max_cost, or a meter built with its own max_cost, not both")
    if meter is not None:
        return meter
    return None if max_cost is None else CostMeter(max_cost)


def multi_process_one(
    data: Sequence[Sequence[Any]],
    openai_model_class: type[OpenAIModel],
    *args: Any,
    threads: int | None = None,
    manager: APIKeyManager | None = None,
    cache: RequestCache | bool | None = None,
    on_error: OnError = "raise",
    progress: bool | None = None,
    max_cost: float | Decimal | None = None,
    meter: CostMeter | None = None,
    mode: str = "online",
    fallback: str = "none",
    batch_options: BatchRunOptions | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Run one request per `(prompt, content, *more)` tuple of `data` in parallel; results in order.

    Each tuple becomes ``openai_model_class(prompt=..., content=..., <more>..., **kwargs)``: the
    values after prompt and content fill the class's other parameters in their declared order
    (for `Gpt35Turbo`, `temperature`), followed by `args`. Keyword arguments go to every model.

    If items fail, the others still finish; then by default a `BatchError` is raised that holds
    the partial results and each item's error (`on_error="none"` or `"return"` put None or the
    exception in place instead). `threads` fixes the requests in flight (and so the memory a
    run may take); by default they follow the pool's limits and observed response time
    (`InFlightTarget`, at most 1,024). `manager` and `cache` as for `request_openai_api`.

    `max_cost` (USD) is a hard cap on what the call spends: each request's worst case (prompt
    + output allowance at its model's price) is reserved before it is sent, so the requests in
    flight together cannot pass it. Once the next request would, no new request is sent; those
    in flight finish. Every item not sent because of the cap fails with `BudgetReachedError`
    and follows `on_error` like any failure: by default a `BatchError` (its `results` hold
    what was answered, its `errors` the `BudgetReachedError` of each item left), with
    ``on_error="return"`` the `BudgetReachedError` in the item's place. A model without a
    known price fails with `CostUnknownError` (nothing sent). Pass a `CostMeter` as `meter`
    instead to read the call's tokens and cost afterwards (``meter.ledger.report()``); its
    own `max_cost`, if any, is the cap.

    `mode` ``"flex"`` sends each request with ``service_tier="flex"`` (batch prices, slower
    answers; see `flex.request_flex`), ``"batch"`` sends them all through the Batch API at half
    price and waits for the batches (`batch_options`: polling, retries, limits; `max_cost`,
    `meter`, `cache` and `threads` apply online only); results come back in order either way.
    `fallback` ``"standard"`` sends what flex or the batches could not answer on the standard
    tier. The default, ``"online"``, is the behaviour described above.
    """
    how = _send_mode(mode, fallback, batch_options, max_cost, meter)
    models, pool = _prepare(data, openai_model_class, args, kwargs, manager, False)
    if how.mode == "batch":
        with use_manager(pool):
            return _batch_results(models, pool, how, on_error)
    budget = run_meter(max_cost, meter) or CostMeter()  # uncapped: it only counts, for the bar
    send = sender(how.mode == "flex", how.standard_fallback)

    def one(model: OpenAIModel) -> Any:
        return send(model, manager=pool, cache=cache, meter=budget)

    count: int | InFlightTarget = threads if threads is not None else InFlightTarget(pool)
    with use_manager(pool):
        return parallel_map(
            one,
            models,
            threads=count,
            on_error=on_error,
            progress=progress,
            desc=openai_model_class.__name__,
            watch=pool_watch(pool, len(models), budget, count),
        )


async def amulti_process_one(
    data: Sequence[Sequence[Any]],
    openai_model_class: type[OpenAIModel],
    *args: Any,
    concurrency: int | None = None,
    manager: APIKeyManager | None = None,
    cache: RequestCache | bool | None = None,
    on_error: OnError = "raise",
    progress: bool | None = None,
    max_cost: float | Decimal | None = None,
    meter: CostMeter | None = None,
    mode: str = "online",
    fallback: str = "none",
    batch_options: BatchRunOptions | None = None,
    **kwargs: Any,
) -> list[Any]:
    """``await amulti_process_one(data, Model, ...)``: `multi_process_one` on the event loop.

    The same items, models, results (in input order) and failure handling; each request is an
    `arequest_openai_api` task. `concurrency` fixes the requests in flight; by default they
    follow the pool's limits and observed response time (`InFlightTarget`, up to 4,096: tasks
    are cheap where threads are not). `max_cost` and `meter` as for `multi_process_one`:
    items left by the cap fail with `BudgetReachedError` at once, unsent. `mode`, `fallback`
    and `batch_options` as for `multi_process_one` (a batch run polls in a worker thread).
    """
    how = _send_mode(mode, fallback, batch_options, max_cost, meter)
    models, pool = _prepare(data, openai_model_class, args, kwargs, manager, True)
    if how.mode == "batch":
        with use_manager(pool):
            return await asyncio.to_thread(_batch_results, models, pool, how, on_error)
    budget = run_meter(max_cost, meter) or CostMeter()  # uncapped: it only counts, for the bar
    send = async_sender(how.mode == "flex", how.standard_fallback)

    async def one(model: OpenAIModel) -> Any:
        return await send(model, manager=pool, cache=cache, meter=budget)

    count: int | InFlightTarget = (
        concurrency if concurrency is not None else InFlightTarget(pool, MAX_ASYNC_CONCURRENCY)
    )
    with use_manager(pool):
        return await aparallel_map(
            one,
            models,
            concurrency=count,
            on_error=on_error,
            progress=progress,
            desc=openai_model_class.__name__,
            watch=pool_watch(pool, len(models), budget, count),
        )


def _send_mode(
    mode: str,
    fallback: str,
    batch_options: BatchRunOptions | None,
    max_cost: float | Decimal | None,
    meter: CostMeter | None,
) -> SendMode:
    """The checked `SendMode` of a call (a cost cap is for online requests only)."""
    from .batch.library import SendMode

    how = SendMode(mode=mode, fallback=fallback, batch_options=batch_options)
    if how.mode == "batch" and (max_cost is not None or meter is not None):
        raise ValueError("max_cost and meter cap online requests: leave them out with mode='batch'")
    if how.mode == "online" and how.standard_fallback:
        raise ValueError("fallback='standard' needs mode='flex' or mode='batch'")
    return how


def _batch_results(
    models: list[OpenAIModel], pool: APIKeyManager, how: SendMode, on_error: OnError
) -> list[Any]:
    """`multi_process_one`'s results of a batch run: parsed answers, failures by `on_error`."""
    from .batch.library import send_as_batch

    _check_on_error(on_error)
    answers = send_as_batch(models, manager=pool, options=how.run_options())
    results: list[Any] = [None] * len(models)
    errors: dict[int, BaseException] = {}
    for index, (model, answer) in enumerate(zip(models, answers, strict=True)):
        if isinstance(answer, BaseException):
            _record(results, errors, index, answer, None, on_error)
        else:
            _record(results, errors, index, None, model.parse(answer), on_error)
    if errors and on_error == "raise":
        raise BatchError(results, errors)
    return results
