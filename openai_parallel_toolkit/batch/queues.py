"""Which project's queue a batch goes to, and whether it fits there now.

Each queue (a project: keys of one limit group) holds at most a model's enqueued-token limit
of input tokens in pending batches: the limit given in `BatchLimits.enqueued_tokens`, or the one
the API reported in a ``token_limit_exceeded`` error (learned into the journal). A chunk is
assigned to the least loaded queue with room, and to the key of that queue with the fewest
chunks; a queue with nothing pending takes any chunk, so that a job always moves.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from .clients import BatchClients
from .journal import BatchJournal, ChunkRow
from .planner import BatchLimits

__all__ = ["TERMINAL", "Queues"]

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
"""Batch statuses that never change again."""

_QUEUE_LIMIT = re.compile(r"Limit:\s*([\d,]+)\s*enqueued tokens")


class Queues:
    """The queues of a job's keys, read from its journal."""

    def __init__(self, journal: BatchJournal, limits: BatchLimits, clients: BatchClients) -> None:
        self.journal = journal
        self.limits = limits
        self.clients = clients

    def __repr__(self) -> str:
        return f"Queues({sorted({k.queue for k in self.clients.all()})})"

    def learn(self, row: ChunkRow, errors: Any) -> None:
        """Remember the limit a ``token_limit_exceeded`` error of `row`'s batch reports."""
        match = _QUEUE_LIMIT.search(str(errors))
        if match is not None and row.queue is not None:
            limit = match.group(1).replace(",", "")
            self.journal.put(f"queue_limit/{row.queue}/{row.model}", limit)

    def limit(self, queue: str, model: str) -> int | None:
        """The enqueued-token limit of `model` in `queue` (None: none known)."""
        learned = self.journal.get(f"queue_limit/{queue}/{model}")
        if learned is not None:
            return int(learned)
        return self.limits.enqueued_tokens.get(model)

    def queued(self, queue: str, model: str, *, reserved: bool) -> int:
        """Input tokens of `model` in `queue`: of batches in flight, and with `reserved` of
        chunks assigned to the queue but not submitted yet."""
        states = ("submitted", "uploading", "uploaded", "creating") if reserved else ("submitted",)
        return sum(
            row.tokens
            for row in self.journal.chunks(*states)
            if row.queue == queue
            and row.model == model
            and (row.state != "submitted" or row.batch_status not in TERMINAL)
        )

    def fits(self, queue: str, row: ChunkRow, *, reserved: bool) -> bool:
        """True when `row` fits in `queue` now (see `queued` for `reserved`)."""
        limit = self.limit(queue, row.model)
        if limit is None:
            return True
        queued = self.queued(queue, row.model, reserved=reserved)
        return queued == 0 or queued + row.tokens <= limit

    def assign(self, row: ChunkRow) -> ChunkRow | None:
        """Choose the key of a planned chunk: the least loaded queue with room, then the key
        of that queue with the fewest chunks. None when no queue has room now."""
        keys = self.clients.all()
        load = Counter(r.key_id for r in self.journal.chunks() if r.key_id is not None)
        queues = sorted(
            dict.fromkeys(k.queue for k in keys),  # in the pool's order, ties to the first
            key=lambda q: self.queued(q, row.model, reserved=True),
        )
        for queue in queues:
            if self.fits(queue, row, reserved=True):
                key = min((k for k in keys if k.queue == queue), key=lambda k: load[k.key_id])
                return self.journal.update(
                    row.chunk, key_id=key.key_id, queue=queue, state="uploading"
                )
        return None
