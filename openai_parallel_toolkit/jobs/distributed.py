"""A JSONL job shared by several workers through Redis: ``run IN -o OUT --redis URL --worker``.

Start the same command on as many machines as you like (the input and output on storage they
all see at the same path). The job is named in Redis by a hash of the input's bytes and the
output's absolute path, so jobs never mix. Work goes round by round (`_store.workqueue`):

1. The first worker to arrive plans, alone, under a lease: it merges part files left by
   workers that all stopped (`parts`), then plans as a single-process run does
   (`plan.prepare_job`: the same refusals, repairs and request hashes), and publishes the
   lines to send as chunks of a Redis stream. A refusal stops every worker with its reason.
2. Every worker claims chunks, sends their lines and appends the results to its own part
   file; once a chunk's lines are all written it fsyncs the part and acknowledges the chunk.
   The chunks of a worker that stops renewing its lease (killed) are taken over, minus the
   lines its part file already answers. A worker stopped by Ctrl-C or SIGTERM, or failing
   with an error, first writes what it had in flight, then hands back the chunks it has not
   finished, so another worker takes them at once. A chunk whose holders all died or failed
   on it `MAX_DELIVERIES` times gets an error line for each of its lines not yet answered,
   instead of killing workers for ever (a re-run retries those lines, as any failed line).
3. The worker that acknowledges the last chunk merges every part into the output, atomically
   (``--ordered``: writes the sorted copy too), and the round is done; the others return.

Running the command again starts a new round whose planning finds only what is missing:
after a complete run, nothing is sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._store.workqueue import MAX_DELIVERIES, Chunk, SharedWork
from ..errors import RequestFailedError
from ..keys import APIKeyManager
from ..request import RetryPolicy
from .parts import PartWriter, answered, merge_parts, parts_folder
from .plan import JobPlan, check_paths, prepare_job
from .results import ResultsFileError, check_ordered_target, write_ordered
from .runner import JobSummary, check_options, ordered_copy_path
from .sending import SendOptions, send_items
from .source import Item, input_identity

__all__ = ["MAX_DELIVERIES", "run_shared_jsonl_job", "shared_job_id"]

logger = logging.getLogger(__name__)

# How often a worker waiting for another's planning or finishing looks again.
_POLL_SECONDS = 0.2
# At most this many bad lines are recorded in Redis for the other workers' summaries.
_MALFORMED_SHOWN = 1000


def shared_job_id(source: Path, target: Path) -> str:
    """The job's name in Redis: a hash of the input's bytes and the output's absolute path."""
    text = f"{input_identity(source)}\0{target.resolve()}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class _Settings:
    endpoint: str | None
    redo_changed: bool
    ordered: bool
    chunk_size: int
    send: SendOptions


class _Chunks:
    """The chunks this worker is sending: each is acknowledged once its lines are all written."""

    def __init__(self, work: SharedWork, part: PartWriter) -> None:
        self._work = work
        self._part = part
        self._lock = threading.Lock()
        self._left: dict[str, int] = {}
        self._chunk_of: dict[int, Chunk] = {}  # input line -> its chunk

    def add(self, chunk: Chunk, items: list[Item]) -> None:
        if not items:  # everything already answered (a chunk taken over)
            self._acknowledge(chunk)
            return
        with self._lock:
            self._left[chunk.entry_id] = len(items)
            for item in items:
                self._chunk_of[item.line] = chunk

    def busy(self) -> bool:
        """True while a chunk of this worker's has lines not written yet."""
        with self._lock:
            return bool(self._left)

    def wanted(self, item: Item) -> bool:
        """False for the lines of a chunk another worker took over: it sends them now."""
        with self._lock:
            chunk = self._chunk_of.get(item.line)
        return chunk is None or not self._work.lost(chunk)

    def refusal(self, item: Item) -> Exception | None:
        """The error to write instead of sending `item`, when its chunk is exhausted."""
        with self._lock:
            chunk = self._chunk_of.get(item.line)
        if chunk is None or not chunk.exhausted:
            return None
        return RequestFailedError(
            f"not sent: the chunk holding this line was handed to {chunk.deliveries - 1} "
            "workers and each one died or failed before finishing it (the limit is "
            f"{MAX_DELIVERIES}); run the job again to retry the line"
        )

    def written(self, item: Item) -> None:
        with self._lock:
            chunk = self._chunk_of.pop(item.line)
            self._left[chunk.entry_id] -= 1
            complete = not self._left[chunk.entry_id]
            if complete:
                del self._left[chunk.entry_id]
        if complete:
            self._acknowledge(chunk)

    def _acknowledge(self, chunk: Chunk) -> None:
        try:
            self._part.sync()  # on disk before Redis hears it is done
            self._work.ack(chunk)
        except Exception as exc:  # the chunk is taken over after its lease: nothing is lost
            logger.warning("could not acknowledge chunk %s: %s", chunk.entry_id, exc)


def _decode(chunk: Chunk) -> tuple[array[int], array[int]]:
    lines, offsets = array("q"), array("q")
    for entry in chunk.items:
        line, offset = entry.split(":")
        lines.append(int(line))
        offsets.append(int(offset))
    return lines, offsets


def _chunked(plan: JobPlan, size: int) -> Iterator[list[str]]:
    pairs = [f"{line}:{offset}" for line, offset in zip(plan.lines, plan.offsets, strict=True)]
    for start in range(0, len(pairs), size):
        yield pairs[start : start + size]


class _Worker:
    """One worker's part in one shared job, from joining to the end of the round."""

    def __init__(
        self,
        source: Path,
        target: Path,
        work: SharedWork,
        manager: APIKeyManager,
        settings: _Settings,
    ) -> None:
        self.source, self.target, self.work = source, target, work
        self.manager, self.settings = manager, settings
        self.folder = parts_folder(target)
        self.done = self.failed = 0
        self.interrupted = False
        self.copy: str | None = None

    def run(self) -> dict[str, str]:
        """Take part until the round is over; returns the round's record."""
        step = self.work.join(None)
        joined = step.round
        while step.action != "done" and not self.interrupted:
            if step.action == "plan":
                self._plan()
            elif step.action == "work":
                self._send(joined)
            elif step.action == "finish":
                self._finish()
            elif step.action == "refused":
                raise ResultsFileError(self.work.info().get("reason", "refused"))
            else:
                time.sleep(_POLL_SECONDS)  # another worker plans or finishes
            step = self.work.join(joined)
        return self.work.info()

    def _plan(self) -> None:
        settings = self.settings
        try:
            merge_parts(self.target, self.folder)  # left by workers that all stopped
            plan, existing = prepare_job(
                self.source, self.target, settings.endpoint, settings.redo_changed
            )
        except ResultsFileError as exc:
            self.work.refuse(str(exc))
            raise
        malformed = [str(bad) for bad in plan.bad]
        info = {
            "endpoint": settings.endpoint or "",
            "items": str(len(plan)),
            "skipped": str(plan.skipped),
            "malformed": json.dumps(malformed[:_MALFORMED_SHOWN]),
            "redone": str(len(plan.changed)),
            "repaired": "1" if existing.torn_at is not None else "",
        }
        if not self.work.publish(_chunked(plan, settings.chunk_size), info):
            logger.warning("planning took longer than the lease: another worker plans instead")

    def _send(self, joined: int) -> None:
        info = self.work.info()
        part = PartWriter(self.folder, self.work.consumer)
        chunks = _Chunks(self.work, part)
        try:
            sink, self.interrupted = send_items(
                self._items(joined, info.get("endpoint") or None, chunks),
                part,
                manager=self.manager,
                total=int(info.get("items", 0)),
                options=self.settings.send,
                written=chunks.written,
                wanted=chunks.wanted,
                refused=chunks.refusal,
            )
        finally:
            # On disk before the chunks not finished are handed back (SharedWork.close).
            part.sync()
            part.close()
        self.done += sink.done
        self.failed += sink.failed

    def _items(self, joined: int, endpoint: str | None, chunks: _Chunks) -> Iterator[Item]:
        """The items of each chunk this worker claims, until there is none to claim now while
        this worker's own chunks are in progress, or the round has no more to claim."""
        while True:
            chunk = self.work.claim()
            if chunk is None:
                if chunks.busy():
                    # Waiting here would hold up the sending loop, which draws items in this
                    # thread: let it see its items end first (an item that raised, whose chunk
                    # is never finished, then ends the run); `run` comes back for more.
                    return
                if self.work.join(joined).action != "work":
                    return
                continue
            lines, offsets = _decode(chunk)
            plan = JobPlan(self.source, endpoint, lines, offsets)
            # A chunk taken over may be partly answered by the worker that had it.
            skip = answered(self.folder) if chunk.taken_over else set()
            items = [item for item in plan.items() if item.item_id not in skip]
            if chunk.exhausted and items:
                logger.error(
                    "chunk %s was handed to %d workers that each died or failed on it: its %d "
                    "lines not answered get error lines instead of being sent again",
                    chunk.entry_id,
                    chunk.deliveries - 1,
                    len(items),
                )
            chunks.add(chunk, items)
            yield from items

    def _finish(self) -> None:
        merge_parts(self.target, self.folder)
        if self.settings.ordered:
            self.copy = str(write_ordered(self.target, ordered_copy_path(self.target)))
        if not self.work.finished():
            logger.warning("finishing took longer than the lease: another worker finished too")


def run_shared_jsonl_job(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    manager: APIKeyManager,
    redis_url: str,
    endpoint: str | None = None,
    threads: int | None = None,
    ordered: bool = False,
    progress: bool = True,
    policy: RetryPolicy | None = None,
    redo_changed: bool = False,
    status_interval: float = 10.0,
    lease_seconds: float = 30.0,
    chunk_size: int = 50,
) -> JobSummary:
    """Take part, as one worker among any number, in the JSONL job `input_path` -> `output_path`.

    Returns when the job's round is over (every line answered, or failed, once in the output)
    or this worker was interrupted; the summary counts what this worker sent, and what the
    planning found (skipped, bad lines). The other parameters are those of `run_jsonl_job`,
    as the planning worker applies them; `lease_seconds` is how long a worker may be silent
    before its chunks are taken over, `chunk_size` how many lines a chunk holds.

    Raises `ResultsFileError` as `run_jsonl_job` does (in every worker of the round), and
    `ConnectionError` when Redis cannot be used.
    """
    source, target = Path(input_path), Path(output_path)
    check_options(endpoint, status_interval)
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    check_paths(source, target)
    if ordered:
        check_ordered_target(ordered_copy_path(target))
    started = time.monotonic()
    settings = _Settings(
        endpoint,
        redo_changed,
        ordered,
        chunk_size,
        SendOptions(threads, policy, progress, status_interval),
    )
    import redis

    try:
        with SharedWork(
            redis_url, shared_job_id(source, target), lease_seconds=lease_seconds
        ) as work:
            worker = _Worker(source, target, work, manager, settings)
            info = worker.run()
    except redis.RedisError as exc:
        raise ConnectionError(f"shared job through Redis: {type(exc).__name__}: {exc}") from exc
    return _summary(worker, info, time.monotonic() - started)


def _summary(worker: _Worker, info: dict[str, str], elapsed: float) -> JobSummary:
    malformed: Iterable[Any] = json.loads(info.get("malformed") or "[]")
    return JobSummary(
        done=worker.done,
        skipped=int(info.get("skipped") or 0),
        failed=worker.failed,
        malformed=tuple(str(line) for line in malformed),
        interrupted=worker.interrupted,
        elapsed=elapsed,
        repaired=bool(info.get("repaired")),
        redone=int(info.get("redone") or 0),
        ordered_copy=worker.copy,
    )
