"""One job's work shared by several workers (processes, machines) through a Redis stream.

Built on what Redis offers for exactly this, a stream with a consumer group: the plan of a
round is a stream of chunks (XADD, published at once by a RENAME); workers claim chunks
(XREADGROUP), acknowledge each once its results are safely written (XACK), and take over the
chunks of a worker that stopped renewing them (XAUTOCLAIM with the lease as minimum idle
time). A chunk's lease is its idle time in the group's pending list; a live worker resets it
every third of the lease (XCLAIM by its owner). A worker that stops (Ctrl-C, SIGTERM, an
error) hands back the chunks it still holds as it closes, by making them look idle for a
whole lease, so another worker takes them at once. The group's delivery count tells how often
a chunk was handed out; past `MAX_DELIVERIES` (every holder died or failed on it, a "poison"
chunk) it comes back `exhausted`, for its claimer to end as failed rather than try again.

The only state of our own is a small hash per job: which round, which phase (planning,
running, finishing, done, refused), who leads a planning or finishing phase and until when
(Redis's clock). Its changes are Lua scripts (``lua/work_*.lua``), so two workers never both
plan, both finish, or acknowledge a chunk that is no longer theirs.

A round: the first worker to join plans (the others wait), the workers claim and process
chunks, the one that acknowledges the last chunk finishes (merges results, records them),
and the round is done. A worker joining a finished round starts a new one, whose planning
finds what is left (nothing, after a complete run). A planner or finisher that dies is
replaced once its lease runs out; so is a worker holding chunks.

Redis keys are named by the job's id (a hash the caller computes), never by paths or API keys.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, cast

from .connection import connect, lua_script, worker_name

__all__ = ["MAX_DELIVERIES", "Chunk", "SharedWork", "Step"]

logger = logging.getLogger("openai_parallel_toolkit.shared")

Action = Literal["plan", "wait", "work", "finish", "done", "refused"]
_GROUP = "workers"
# Chunks are staged in a pipeline of this many XADDs at a time.
_STAGE_BATCH = 500
# A chunk is processed by at most this many workers that died or failed while holding it
# (a worker stopped by Ctrl-C or SIGTERM does not count): more would let one bad chunk kill
# workers for ever; fewer would give up on chunks whose holders died for other reasons.
MAX_DELIVERIES = 3


@dataclass(frozen=True, slots=True)
class Step:
    """What a worker does next in round `round` (see `SharedWork.join`)."""

    round: int
    action: Action


@dataclass(frozen=True, slots=True)
class Chunk:
    """A claimed chunk: its stream entry id, its items, whether another worker had it, and
    how many times it was handed out (this time included)."""

    entry_id: str
    items: tuple[str, ...]
    taken_over: bool
    deliveries: int = 1

    @property
    def exhausted(self) -> bool:
        """True when `MAX_DELIVERIES` holders already died or failed on this chunk: end its
        items as failed, without processing them again."""
        return self.deliveries > MAX_DELIVERIES


class SharedWork:
    """A worker's handle on the shared job `job` (an id without secrets) in Redis at `url`.

    `lease_seconds` is how long a worker may go silent (killed, frozen) before its chunks, or
    the phase it leads, are taken over; a background thread renews them every third of it.
    Use as a context manager, or call `close`: either hands back the chunks still held.
    """

    def __init__(
        self,
        url: str,
        job: str,
        *,
        lease_seconds: float = 30.0,
        namespace: str = "openai-parallel-toolkit",
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be > 0")
        self._redis, self._errors = connect(
            url, socket_timeout=10.0, socket_connect_timeout=5.0, decode_responses=True
        )
        import redis as redis_module  # present: `connect` checked it

        self._response_error: type[Exception] = redis_module.ResponseError
        self.consumer = worker_name()
        self.lease_ms = max(1, int(lease_seconds * 1000))
        base = f"{namespace}:job:{{{job}}}"  # one hash tag: a cluster keeps a job on one node
        self._state, self._stream = f"{base}:state", f"{base}:stream"
        self._staging = f"{base}:staging:{self.consumer}"
        self._join, self._publish, self._ack, self._renew, self._settle, self._release = (
            self._redis.register_script(lua_script(name))
            for name in (
                "work_join", "work_publish", "work_ack", "work_renew", "work_settle",
                "work_release",
            )
        )  # fmt: skip
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._lost: set[str] = set()
        self._closed = threading.Event()
        self._renewer = threading.Thread(target=self._renew_loop, name="shared-work", daemon=True)
        self._renewer.start()

    # -- rounds and phases --------------------------------------------------------------------

    def join(self, joined: int | None) -> Step:
        """What to do next, having joined round `joined` (None: not yet).

        ``plan`` / ``finish``: this worker leads that phase now (and holds its lease);
        ``wait``: another worker leads it; ``work``: chunks are there to claim; ``done`` /
        ``refused``: the round joined is over. Joining when no round is under way (or the last
        one is over) starts a new round, planned by this worker.
        """
        round_, action = self._join(
            keys=[self._state], args=[self.consumer, self.lease_ms, joined or ""]
        )
        return Step(int(round_), cast(Action, action))

    def publish(self, chunks: Iterable[Sequence[str]], info: Mapping[str, str]) -> bool:
        """Make `chunks` the round's work and record `info` (read back by `info`).

        The chunks are staged under a key of this worker's, then become the job's stream in
        one step, so a planner that dies halfway leaves no part of a plan. With no chunks the
        round goes straight to finishing, led by this worker. False (nothing published) when
        this worker's planning lease ran out and another worker plans instead.
        """
        self._redis.delete(self._staging)
        total = 0
        batch: list[str] = []

        def flush() -> None:
            with self._redis.pipeline(transaction=False) as pipe:
                for payload in batch:
                    pipe.xadd(self._staging, {"items": payload})
                pipe.execute()
            batch.clear()

        for chunk in chunks:
            batch.append(json.dumps(list(chunk), separators=(",", ":")))
            total += 1
            if len(batch) >= _STAGE_BATCH:
                flush()
        if batch:
            flush()
        fields = [value for pair in info.items() for value in pair]
        published = self._publish(
            keys=[self._state, self._staging, self._stream],
            args=[self.consumer, _GROUP, self.lease_ms, total, *fields],
        )
        return bool(published)

    def info(self) -> dict[str, str]:
        """The round's record: what the planner published, ``total`` / ``acked`` chunks,
        ``phase``, ``reason`` of a refusal."""
        return cast(dict[str, str], self._redis.hgetall(self._state))

    def refuse(self, reason: str) -> None:
        """End a planning this worker leads as refused: every worker of the round stops with
        `reason`, and the next run starts a new round."""
        self._settle(
            keys=[self._state, self._stream], args=[self.consumer, "planning", "refused", reason]
        )

    def finished(self) -> bool:
        """End a finishing this worker leads: the round is done. False if another worker
        leads it now (this one's lease ran out)."""
        return bool(
            self._settle(
                keys=[self._state, self._stream], args=[self.consumer, "finishing", "done", ""]
            )
        )

    # -- chunks -------------------------------------------------------------------------------

    def claim(self, block: float = 0.2) -> Chunk | None:
        """A chunk for this worker: a new one (waiting up to `block` seconds for none), else one
        whose holder let its lease run out; None when neither is there right now."""
        try:
            answer: Any = self._redis.xreadgroup(
                _GROUP, self.consumer, {self._stream: ">"}, count=1, block=int(block * 1000)
            )
        except self._response_error as exc:
            if "NOGROUP" in str(exc):
                return None  # the round is over: its stream is gone
            raise
        if answer:
            entry_id, fields = answer[0][1][0]
            return self._hold(entry_id, fields, taken_over=False)
        start = "0-0"
        while True:  # XAUTOCLAIM looks at a bounded part of the pending list per call
            try:
                reply: Any = self._redis.xautoclaim(
                    self._stream, _GROUP, self.consumer, self.lease_ms, start, count=1
                )
            except self._response_error as exc:
                if "NOGROUP" in str(exc):
                    return None
                raise
            start, entries = reply[0], reply[1]
            for entry_id, fields in entries:
                if fields:  # None: an entry deleted from the stream
                    logger.info("taking over chunk %s of a worker that stopped", entry_id)
                    return self._hold(
                        entry_id, fields, taken_over=True, deliveries=self._deliveries(entry_id)
                    )
            if start in ("0-0", b"0-0"):
                return None

    def ack(self, chunk: Chunk) -> bool:
        """Acknowledge `chunk` as written. False when it was taken over meanwhile (its lease
        ran out): the new holder writes it too, and the results' merge keeps one answer."""
        with self._lock:
            self._held.discard(chunk.entry_id)
            self._lost.discard(chunk.entry_id)
        answer = self._ack(
            keys=[self._stream, self._state],
            args=[_GROUP, chunk.entry_id, self.consumer, self.lease_ms],
        )
        return bool(answer)

    def lost(self, chunk: Chunk) -> bool:
        """True once a renewal found `chunk` taken over by another worker."""
        with self._lock:
            return chunk.entry_id in self._lost

    def _hold(
        self, entry_id: str, fields: Mapping[str, str], *, taken_over: bool, deliveries: int = 1
    ) -> Chunk:
        with self._lock:
            self._held.add(entry_id)
        items = tuple(str(item) for item in json.loads(fields["items"]))
        return Chunk(entry_id, items, taken_over, deliveries)

    def _deliveries(self, entry_id: str) -> int:
        """How many times the entry was handed out (XAUTOCLAIM counts, but does not say)."""
        pending: Any = self._redis.xpending_range(self._stream, _GROUP, entry_id, entry_id, 1)
        return int(pending[0]["times_delivered"]) if pending else 1

    # -- leases -------------------------------------------------------------------------------

    def renew(self) -> None:
        """Renew this worker's leases now (the background thread does so every third)."""
        with self._lock:
            held = sorted(self._held)
        kept = self._renew(
            keys=[self._stream, self._state],
            args=[_GROUP, self.consumer, self.lease_ms, *held],
        )
        gone = set(held) - set(kept)
        if gone:
            logger.warning(
                "%d chunks were taken over by other workers (this worker was silent longer "
                "than the lease); their items already sent are merged once",
                len(gone),
            )
        with self._lock:
            self._held -= gone
            self._lost |= gone

    def _renew_loop(self) -> None:
        failing = False
        while not self._closed.wait(self.lease_ms / 3000):
            try:
                self.renew()
            except self._errors as exc:
                if not failing:
                    logger.warning("cannot renew leases in Redis: %s", type(exc).__name__)
                failing = True
            else:
                failing = False

    def hand_back(self, *, failed: bool) -> int:
        """Hand back every chunk this worker still holds, for another worker to take at once
        (what this worker wrote of them is the caller's to have put on disk first).

        With `failed` (this worker raised) the delivery counts against the chunks, towards
        `MAX_DELIVERIES`; a worker merely stopped (Ctrl-C, SIGTERM) leaves their count as it
        was. Returns how many chunks were handed back.
        """
        count = int(
            self._release(
                keys=[self._stream],
                args=[_GROUP, self.consumer, self.lease_ms, "1" if failed else "0"],
            )
        )
        with self._lock:
            self._held.clear()
        if count:
            logger.info("handed back %d unfinished chunks to the other workers", count)
        return count

    def close(self, *, failed: bool = False) -> None:
        """Stop renewing, hand back the chunks still held (see `hand_back`), disconnect.

        If Redis cannot be reached, the chunks are taken over after the lease instead.
        """
        self._closed.set()
        self._renewer.join()
        try:
            self.hand_back(failed=failed)
        except self._errors as exc:
            logger.warning(
                "could not hand back unfinished chunks (%s): others take them over after the lease",
                type(exc).__name__,
            )
        finally:
            self._redis.close()

    def __enter__(self) -> SharedWork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Ctrl-C and SIGTERM (KeyboardInterrupt) stop a worker; anything else is a failure
        # that may come from the chunks it holds, so it counts towards MAX_DELIVERIES.
        self.close(failed=exc is not None and not isinstance(exc, KeyboardInterrupt))
