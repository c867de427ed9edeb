"""The queue of callers waiting for a slot of the key pool: threads and event-loop tasks alike.

Waiters take turns in arrival order, whatever kind they are, so a thread and a task asking at
once are served fairly and the pool's limits hold across both. Only the first waiter looks at
the pool and watches the clock; the others sleep until their turn, so hundreds of waiters cost
nothing. The queue lives under the pool's lock (`Turns.lock`), which is never held while anyone
sleeps: a thread waits on a `threading.Condition` of that lock, a task on an `asyncio.Event`
(see `aio.AsyncWaiter`).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from ..clock import Clock

__all__ = ["Turns", "Waiter"]

_T = TypeVar("_T")


class Waiter(Protocol):
    """Something in the queue that can be told to look at the pool again."""

    def notify(self) -> bool | None:
        """Wake the waiter; False when it can never wake again (its event loop is closed)."""
        ...


class Turns:
    """Waiters in arrival order under `lock`, the pool's one lock."""

    __slots__ = ("_queue", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._queue: collections.deque[Waiter] = collections.deque()

    def join(self, waiter: Waiter) -> None:
        """Under the lock: queue `waiter` behind everyone already waiting."""
        self._queue.append(waiter)

    def leave(self, waiter: Waiter) -> None:
        """Under the lock: take `waiter` out (served, timed out or cancelled); wake the next."""
        self._queue.remove(waiter)
        self.wake_first()

    def is_first(self, waiter: Waiter) -> bool:
        """Under the lock: whether it is `waiter`'s turn to ask the pool."""
        return self._queue[0] is waiter

    def wake_first(self) -> None:
        """Under the lock: serve the waiters at the front that can be served where they stand
        (an `AsyncWaiter` built with its grant), in order, while the pool has a slot for each;
        then let the first waiter left look at the pool again."""
        while self._queue:
            head = self._queue[0]
            serve = getattr(head, "serve", None)  # threads wait on a bare Condition
            if serve is not None and serve():
                self._queue.popleft()
                continue
            if head.notify() is not False:
                return
            # Its loop closed while it waited: it cannot take its turn, nor give it up.
            self._queue.popleft()

    def wait(self, grant: Callable[[], _T | float], clock: Clock) -> _T:
        """Block this thread until `grant()` (called under the lock, in turn) gives a slot.

        `grant` returns the slot, or the seconds until one is expected; the first waiter waits
        that long on the clock, or less when something frees capacity and wakes it.
        """
        with self.lock:
            turn = threading.Condition(self.lock)
            self._queue.append(turn)
            try:
                while True:
                    if self._queue[0] is turn:
                        slot = grant()
                        if not isinstance(slot, float):
                            return slot
                        clock.wait(turn, slot)
                    else:
                        turn.wait()
            finally:
                self.leave(turn)

    def __len__(self) -> int:
        return len(self._queue)

    def __repr__(self) -> str:
        return f"<Turns waiting={len(self._queue)}>"
