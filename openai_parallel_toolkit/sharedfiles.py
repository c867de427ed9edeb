"""`ParallelToolkit` with several workers on one input folder: inputs claimed through Redis.

With ``shared_state``, every worker started on the same input and output paths takes part in
one job, named in Redis by a hash of the two resolved paths. The work goes round by round as
for JSONL jobs (`_store.workqueue`): the first worker lists the inputs not done yet, alone,
and publishes them as a Redis stream; every worker claims inputs, runs the hooks, publishes
the outputs as a single run does, and then acknowledges the input; a killed worker's inputs
are taken over after the lease; the worker that acknowledges the last input records the round
in the journal; the others return when it has.

The journal (``done.sqlite``) is opened only by the worker that plans and the one that
finishes, never by two at once: SQLite's locking cannot be trusted on network file systems.
Meanwhile each worker records the inputs it finished in a file of its own,
``.openai-parallel-toolkit/done-parts/<worker>.jsonl`` (fsynced before the acknowledgement),
which the finishing worker merges into the journal; a planner first merges what workers that
all stopped left there, and a worker taking an input over skips it when it is recorded there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from ._store.workqueue import Chunk, SharedWork
from .filelisting import InputFile
from .filestate import Journal

__all__ = ["SharedInputs"]

logger = logging.getLogger(__name__)

_POLL_SECONDS = 0.2


def _done_parts(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.suffix == ".jsonl")


def _records(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """(input, outputs) of every complete line of the done-part files in `folder`."""
    for part in _done_parts(folder):
        with open(part, "rb") as file:
            for raw in file:
                if not raw.endswith(b"\n"):
                    break  # torn by a kill: that input is not recorded, so it is done again
                record = json.loads(raw)
                yield record["input"], record["outputs"]


def merge_done_parts(journal: Journal, folder: Path) -> None:
    """Record every input of the done-part files in `journal` as done, then remove the files."""
    for relative, outputs in _records(folder):
        journal.done(relative, outputs)
    for part in _done_parts(folder):
        part.unlink(missing_ok=True)


class SharedInputs:
    """One worker's part in a `ParallelToolkit` run shared through Redis at `url`.

    `state` is the run's state folder; `pending(journal)` lists the inputs not done yet (the
    toolkit's own listing, with its skip, adopt and ``file_count`` rules). Use `tasks` as the
    run's inputs, `publishing` / `done` as its journal in the hooks' worker threads, `settle`
    once each input ended, and `finish` after the run's loop.
    """

    def __init__(
        self,
        url: str,
        input_path: Path,
        output_path: Path,
        state: Path,
        *,
        lease_seconds: float = 30.0,
    ) -> None:
        text = f"files\0{input_path.resolve()}\0{output_path.resolve()}"
        job = hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]
        self.work = SharedWork(url, job, lease_seconds=lease_seconds)
        self._input, self._output, self._state = input_path, output_path, state
        self._folder = state / "done-parts"
        name = re.sub(r"[^A-Za-z0-9_.-]", "-", self.work.consumer)
        self._part_path = self._folder / f"{name}.jsonl"
        self._part: IO[str] | None = None
        self._lock = threading.Lock()
        self._chunks: dict[str, Chunk] = {}
        self._round = 0

    def tasks(self, pending: Callable[[Journal], Iterator[InputFile]]) -> Iterator[InputFile]:
        """The inputs this worker processes: planned here or by another worker, then claimed,
        until the round has none left to claim."""
        step = self.work.join(None)
        self._round = step.round
        while step.action not in ("finish", "done", "refused"):
            if step.action == "plan":
                self._plan(pending)
            elif step.action == "work":
                chunk = self.work.claim()
                if chunk is not None:
                    task = self._task(chunk)
                    if task is not None:
                        yield task
                    continue
            else:
                time.sleep(_POLL_SECONDS)  # another worker plans or finishes
            step = self.work.join(self._round)

    def _plan(self, pending: Callable[[Journal], Iterator[InputFile]]) -> None:
        journal = Journal(self._state / "done.sqlite")
        try:
            merge_done_parts(journal, self._folder)  # left by workers that all stopped
            chunks = [[task.relative, task.out_name] for task in pending(journal)]
        finally:
            journal.close()
        if not self.work.publish(chunks, {}):
            logger.warning("listing took longer than the lease: another worker lists instead")

    def _task(self, chunk: Chunk) -> InputFile | None:
        relative, out_name = chunk.items
        if chunk.taken_over and any(done == relative for done, _ in _records(self._folder)):
            self.work.ack(chunk)  # its worker finished it and died before saying so
            return None
        if chunk.exhausted:  # not recorded as done: the next run tries it again
            logger.error(
                "%s was handed to %d workers that each died or failed on it: left for the next run",
                relative,
                chunk.deliveries - 1,
            )
            self.work.ack(chunk)
            return None
        with self._lock:
            self._chunks[relative] = chunk
        if self._input.is_file():
            return InputFile(self._input, relative, self._output, out_name)
        parent = Path(relative).parent
        return InputFile(self._input / relative, relative, self._output / parent, out_name)

    # -- the journal of the worker threads ----------------------------------------------------

    def publishing(self, relative: str, outputs: list[str]) -> None:
        """Nothing to record: an input counts as done only once `done` recorded it."""

    def done(self, relative: str, outputs: list[str]) -> None:
        """Record `relative` as finished, on disk before its chunk is acknowledged."""
        line = json.dumps({"input": relative, "outputs": outputs}, ensure_ascii=False) + "\n"
        with self._lock:
            if self._part is None:
                self._folder.mkdir(parents=True, exist_ok=True)
                self._part = open(self._part_path, "a", encoding="utf-8")  # noqa: SIM115
            self._part.write(line)
            self._part.flush()
            os.fsync(self._part.fileno())

    def settle(self, task: InputFile) -> None:
        """`task` ended (done or failed): acknowledge it, so no worker does it again this round."""
        with self._lock:
            chunk = self._chunks.pop(task.relative)
        try:
            self.work.ack(chunk)
        except Exception as exc:  # taken over after the lease; the done-part tells it is done
            logger.warning("could not acknowledge %s: %s", task.relative, exc)

    # -- the end of the round -----------------------------------------------------------------

    def finish(self) -> None:
        """Wait for the round's end; record it in the journal if this worker's turn comes."""
        step = self.work.join(self._round)
        while step.action not in ("done", "refused"):
            if step.action == "finish":
                self._close_part()
                journal = Journal(self._state / "done.sqlite")
                try:
                    merge_done_parts(journal, self._folder)
                finally:
                    journal.close()
                self.work.finished()
            else:
                time.sleep(_POLL_SECONDS)
            step = self.work.join(self._round)

    def _close_part(self) -> None:
        with self._lock:
            if self._part is not None:
                self._part.close()
                self._part = None

    def close(self) -> None:
        """Close this worker's done-part file and its Redis connection."""
        self._close_part()
        with contextlib.suppress(Exception):
            self.work.close()
