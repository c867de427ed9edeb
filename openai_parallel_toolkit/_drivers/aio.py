"""The asyncio driver: waiting for a slot of the key pool from an event loop, without polling.

A task waits in the pool's one queue (`turns.Turns`), in turn with threads and with tasks of
other loops. Its `AsyncWaiter` is woken from any thread through the loop's thread-safe callback;
the first waiter sleeps on one timer until the slot the pool expects, the others until their
turn. The pool's lock is only taken between awaits, never held across one.

Time: with the system clock, waits are the loop's timers. A pool built with another clock (a
`FakeClock` in tests) is asked to `sleep` instead, which moves a fake clock at once, and the
task yields to the loop once, so tests of waiting logic need no real time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import threading
from collections.abc import Callable
from typing import TypeVar

from ..clock import Clock, SystemClock
from ..errors import SlotTimeoutError
from .turns import Turns, Waiter

__all__ = ["AsyncWaiter", "run_in_thread", "sleep", "wait_turn"]

_T = TypeVar("_T")

# Worker threads for blocking code called from a loop (a model with only a sync `generate`):
# as many as requests may be in flight, where the loop's default executor would cap them at
# a handful and throttle the run without anyone noticing.
MAX_WORKER_THREADS = 512


class AsyncWaiter(Waiter[_T]):
    """A task's place in the queue: `notify` sets its event from whichever thread calls it."""

    __slots__ = ("_loop", "_thread", "event")

    def __init__(
        self, grant: Callable[[], _T | float], release: Callable[[_T], None] | None = None
    ) -> None:
        super().__init__(grant, release)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self.event = asyncio.Event()

    def notify(self) -> bool:
        if threading.get_ident() == self._thread:  # on the loop itself: no wake-up round trip
            self.event.set()
            return True
        try:
            self._loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:  # the loop is closed: this waiter will never run again
            return False
        return True

    def _can_wake(self) -> bool:
        return not self._loop.is_closed()

    def __repr__(self) -> str:
        return f"<AsyncWaiter set={self.event.is_set()} served={self.served}>"


async def wait_turn(
    turns: Turns,
    grant: Callable[[], _T | float],
    clock: Clock,
    timeout: float | None = None,
    release: Callable[[_T], None] | None = None,
) -> _T:
    """Wait in turn until `grant()` (called under the lock) gives a slot; return it.

    `grant` returns the slot or the seconds until one is expected. With `timeout`, raises
    `SlotTimeoutError` once that many seconds passed, or at once when the first waiter learns
    that the expected slot lies beyond them. Cancelling the task takes it out of the queue and
    wakes the next waiter. With `release` (what gives a slot back), a waiting task can be
    served where it stands by whoever wakes the queue (`AsyncWaiter.serve`); a slot taken for
    a task that is cancelled (or times out) before it runs is given back with `release`.
    """
    deadline = None if timeout is None else clock.monotonic() + timeout
    expected: float | None = None
    with turns.lock:
        if not turns:
            # Nobody waiting: ask at once. Only a task that must wait builds a waiter (and its
            # event) and joins the queue, where it is first: `expected` is its answer.
            slot = grant()
            if not isinstance(slot, float):
                return slot
            expected = slot
        waiter = AsyncWaiter(grant, release)
        turns.join(waiter)
    asked = expected is not None
    try:
        while True:
            if asked:
                asked = False
            else:
                expected = None
                with turns.lock:
                    if waiter.served:
                        return turns.take(waiter)
                    if turns.is_first(waiter):
                        slot = grant()
                        if not isinstance(slot, float):
                            return slot
                        expected = slot
                    # Cleared under the lock: a wake-up sent after this point is never lost.
                    waiter.event.clear()
            wait = expected
            if deadline is not None:
                left = deadline - clock.monotonic()
                if left <= 0 or (expected is not None and expected > left):
                    raise SlotTimeoutError(
                        f"no key free within {timeout:g} s", retry_after=expected
                    )
                wait = left if wait is None else wait
            await _wait(waiter.event, wait, clock)
    finally:
        turns.finish(waiter)


async def _wait(event: asyncio.Event, seconds: float | None, clock: Clock) -> None:
    """Until `event` is set, or at most `seconds` (None: no limit)."""
    if seconds is None:
        await event.wait()
    elif not isinstance(clock, SystemClock):
        await sleep(clock, seconds)
    else:
        handle = asyncio.get_running_loop().call_later(seconds, event.set)
        try:
            await event.wait()
        finally:
            handle.cancel()


async def sleep(clock: Clock, seconds: float) -> None:
    """Sleep `seconds` on the loop; with a test clock, let it move and yield once."""
    if isinstance(clock, SystemClock):
        await asyncio.sleep(seconds)
    else:
        clock.sleep(seconds)
        await asyncio.sleep(0)


_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _threads() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            # Threads start on demand and are shared by every loop of the process.
            _executor = concurrent.futures.ThreadPoolExecutor(
                MAX_WORKER_THREADS, thread_name_prefix="openai-parallel-toolkit-aio"
            )
        return _executor


async def run_in_thread(function: Callable[[], _T]) -> _T:
    """`function()` in a worker thread, in a copy of this task's context (lease, pool, cache).

    Cancelling the task does not stop the thread: the call runs to its end and its result
    is dropped, as `asyncio.to_thread` does.
    """
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, function)
    return await loop.run_in_executor(_threads(), call)
