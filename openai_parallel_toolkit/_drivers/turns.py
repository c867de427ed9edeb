"""The queue of callers waiting for a slot of the key pool: threads and event-loop tasks alike.

Waiters take turns in arrival order, whatever kind they are, so a thread and a task asking at
once are served fairly and the pool's limits hold across both. Only the first waiter looks at
the pool and watches the clock; the others sleep until their turn, so hundreds of waiters cost
nothing. Whoever frees capacity serves the waiters at the front where they stand, in order, as
far as the pool has slots for them (`Waiter.serve`): a queue that formed while the pool was
busy drains at once, not one waiter after another. The queue lives under the pool's lock
(`Turns.lock`), which is never held while anyone sleeps: a thread waits on a
`threading.Condition` of that lock (`ThreadWaiter`), a task on an `asyncio.Event` (see
`aio.AsyncWaiter`).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ..clock import Clock

__all__ = ["ThreadWaiter", "Turns", "Waiter"]

_T = TypeVar("_T")

# Waiters served where they stand that have not run yet, at most. A slot is granted for the time
# it is taken; a waiter that runs late (a busy event loop) sends late, so a pool serving without
# bound would grant at its limits' pace while a saturated loop sends slower, and its books would
# run ahead of what the server saw. A few are enough to drain a queue in one turn of the loop.
SERVED_AHEAD = 8


class Waiter(Generic[_T]):
    """A place in the queue: `notify` tells it to look at the pool again.

    Built with `grant` (what the waiter would ask the pool) and `release` (what gives a slot
    back), it can also be served where it stands (`serve`): whoever wakes the queue takes the
    slot for it, so a run of waiters behind one another is served at once rather than each in
    turn after the one before it ran. Without `release` it is only ever woken.
    """

    __slots__ = ("_grant", "_release", "claimed", "served", "slot")

    def __init__(
        self, grant: Callable[[], _T | float], release: Callable[[_T], None] | None
    ) -> None:
        self._grant = grant
        self._release = release
        self.slot: _T | None = None
        self.served = False  # `slot` was taken for it, and it left the queue
        self.claimed = False  # it ran since: it has its slot, or gave it back

    def notify(self) -> bool:
        """Wake the waiter; False when it can never wake again (its event loop is closed)."""
        raise NotImplementedError

    def _can_wake(self) -> bool:
        """Whether a slot taken for this waiter could still reach it."""
        return True

    def serve(self) -> bool:
        """Under the lock, first in the queue: take a slot for this waiter if one is free now,
        and wake it; False when none is (it stays first, for the caller to wake)."""
        if self._release is None or not self._can_wake():
            return False
        slot = self._grant()
        if isinstance(slot, float):
            return False
        self.slot, self.served = slot, True
        self.notify()
        return True

    def give_back(self) -> None:
        """Not under the lock: give back the slot taken for it (served, never claimed)."""
        if self._release is not None and self.slot is not None:
            self._release(self.slot)


class ThreadWaiter(Waiter[_T]):
    """A thread's place in the queue: a condition of the pool's lock."""

    __slots__ = ("condition",)

    def __init__(
        self,
        lock: threading.Lock,
        grant: Callable[[], _T | float],
        release: Callable[[_T], None] | None,
    ) -> None:
        super().__init__(grant, release)
        self.condition = threading.Condition(lock)

    def notify(self) -> bool:
        self.condition.notify()
        return True


class Turns:
    """Waiters in arrival order under `lock`, the pool's one lock."""

    __slots__ = ("_queue", "lock", "served_ahead")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._queue: collections.deque[Waiter[Any]] = collections.deque()
        self.served_ahead = 0  # waiters served where they stand that have not taken it yet

    def join(self, waiter: Waiter[Any]) -> None:
        """Under the lock: queue `waiter` behind everyone already waiting."""
        self._queue.append(waiter)

    def leave(self, waiter: Waiter[Any]) -> None:
        """Under the lock: take `waiter` out (served, timed out or cancelled); wake the next."""
        self._queue.remove(waiter)
        self.wake_first()

    def take(self, waiter: Waiter[_T]) -> _T:
        """Under the lock: the slot taken for a served waiter, now that it runs."""
        self.served_ahead -= 1
        waiter.claimed = True
        return waiter.slot  # type: ignore[return-value]  # set with `served`

    def finish(self, waiter: Waiter[Any]) -> None:
        """Not under the lock: `waiter` stops waiting, with its slot or without (an error, a
        cancellation): it leaves the queue, or a slot taken for it that it never took goes
        back (`Waiter.give_back`)."""
        with self.lock:
            if not waiter.served:
                self.leave(waiter)
                return
            if waiter.claimed:
                return
            self.served_ahead -= 1
            waiter.claimed = True
        waiter.give_back()

    def is_first(self, waiter: Waiter[Any]) -> bool:
        """Under the lock: whether it is `waiter`'s turn to ask the pool."""
        return self._queue[0] is waiter

    def wake_first(self) -> None:
        """Under the lock: serve the waiters at the front that can be served where they stand,
        in order, while the pool has a slot for each (and fewer than `SERVED_AHEAD` served ones
        have yet to run); then let the first waiter left look at the pool again."""
        while self._queue:
            head = self._queue[0]
            if self.served_ahead < SERVED_AHEAD and head.serve():
                self.served_ahead += 1
                self._queue.popleft()
                continue
            if head.notify():
                return
            # Its loop closed while it waited: it cannot take its turn, nor give it up.
            self._queue.popleft()

    def wait(
        self,
        grant: Callable[[], _T | float],
        clock: Clock,
        release: Callable[[_T], None] | None = None,
    ) -> _T:
        """Block this thread until `grant()` (called under the lock, in turn) gives a slot.

        `grant` returns the slot, or the seconds until one is expected; the first waiter waits
        that long on the clock, or less when something frees capacity and wakes it. With
        `release` (what gives a slot back), the thread can be served where it stands; a slot
        taken for it is given back if it leaves with an exception instead (Ctrl-C).
        """
        with self.lock:
            if not self._queue:  # nobody waiting: ask at once, without joining the queue
                slot = grant()
                if not isinstance(slot, float):
                    return slot
            turn = ThreadWaiter(self.lock, grant, release)
            self._queue.append(turn)
        try:
            with self.lock:
                while not turn.served:
                    if self._queue[0] is turn:
                        slot = grant()
                        if not isinstance(slot, float):
                            return slot
                        clock.wait(turn.condition, slot)
                    else:
                        turn.condition.wait()
                return self.take(turn)
        finally:
            self.finish(turn)

    def __len__(self) -> int:
        return len(self._queue)

    def __repr__(self) -> str:
        return f"<Turns waiting={len(self._queue)}>"
