"""`completed` and `acompleted` fill a window that grows while nothing ends: before the first of
a run of slow answers arrives, the requests in flight keep growing with the time waited."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from openai_parallel_toolkit.parallel import acompleted, completed

WIDTH = 3


class GrowingWindow:
    """One item at first, `WIDTH` once it was asked again: as `InFlightTarget` grows with the
    age of the oldest request in flight."""

    def __init__(self) -> None:
        self.asked = 0

    def __call__(self) -> int:
        self.asked += 1
        return 1 if self.asked == 1 else WIDTH


def test_threads_fill_a_window_that_grows_while_nothing_ends() -> None:
    # No item can end before all of them run at once: with the window looked at only when an
    # item ends, the first would wait alone until the barrier broke.
    together = threading.Barrier(WIDTH, timeout=10)

    def work(item: int) -> int:
        together.wait()
        return item

    with ThreadPoolExecutor(WIDTH) as executor:
        ended = [(item, future.result()) for item, future in completed(
            executor, work, range(WIDTH), GrowingWindow()
        )]  # fmt: skip
    assert sorted(ended) == [(i, i) for i in range(WIDTH)]


def test_tasks_fill_a_window_that_grows_while_nothing_ends() -> None:
    async def main() -> list[tuple[int, int]]:
        running = 0
        all_in = asyncio.Event()

        async def work(item: int) -> int:
            nonlocal running
            running += 1
            if running == WIDTH:
                all_in.set()
            await asyncio.wait_for(all_in.wait(), 10)
            return item

        return [
            (item, task.result())
            async for item, task in acompleted(work, range(WIDTH), GrowingWindow())
        ]

    assert sorted(asyncio.run(main())) == [(i, i) for i in range(WIDTH)]
