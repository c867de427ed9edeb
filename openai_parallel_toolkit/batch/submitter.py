"""Submitting a batch job: planning its new requests into chunks, uploading, creating batches.

Each step is recorded in the journal before it is taken (``uploading``, ``creating``), so that a
re-run after a crash finds the file (by its name) or the batch (by its metadata) that the crash
left unrecorded, both carrying the journal's token, instead of making another.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

from ..errors import ResultsFileError
from ..jobs.results import read_results
from ..jobs.source import Item, read_item, read_lines
from ..models import RawRequest
from .clients import BatchClients, KeyClient
from .journal import BatchJournal, ChunkRow
from .lines import InputLines
from .planner import BatchLimits, batch_line, custom_id_of, plan
from .queues import Queues

__all__ = ["Submitter"]

logger = logging.getLogger(__name__)


class Submitter:
    """Plans the requests of `lines` not answered in `output` into chunks within `limits`,
    uploads them and creates their batches as far as `queues` allow, all through `journal`."""

    def __init__(
        self,
        journal: BatchJournal,
        clients: BatchClients,
        queues: Queues,
        lines: InputLines,
        *,
        output: Path,
        endpoint: str | None,
        limits: BatchLimits,
    ) -> None:
        self.journal = journal
        self.output = output
        self.endpoint = endpoint
        self.limits = limits
        self._clients = clients
        self._queues = queues
        self._lines = lines
        # The input's (size, mtime) when this object last planned it: unchanged, and no id
        # freed since, there is nothing new to plan and the pass over both files is skipped.
        self._planned: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"Submitter({str(self._lines.path)!r} -> {str(self.output)!r})"

    # -- planning

    def _pending_items(self) -> Iterator[Item]:
        """Items of the input with neither a result line nor a place in a chunk (streamed:
        the planner keeps line numbers, not bodies)."""
        source = self._lines.path
        done = read_results(self.output).hashes
        planned = self.journal.planned_ids()
        for number, _, raw in read_lines(source):
            item = read_item(number, raw, self.endpoint)
            if not isinstance(item, Item):
                logger.warning("%s: %s; skipped", source, item)
                continue
            answered = done.get(item.item_id)
            if answered is not None and answered != item.request_hash:
                raise ResultsFileError(
                    f"{self.output}: the answer of id {item.item_id!r} (line {number}) is for "
                    "another request than the input's line now; nothing was changed (choose "
                    "another output file)"
                )
            if answered is None and custom_id_of(item) not in planned:
                yield item

    def plan(self) -> int:
        """Record chunks for the requests not planned yet; returns how many chunks were added."""
        stat = self._lines.path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        if stamp == self._planned:
            return 0
        added = 0
        for chunk in plan(self._pending_items(), self.limits):
            self.journal.add_chunk(chunk.endpoint, chunk.model, chunk.entries, chunk.tokens)
            added += 1
        self._planned = stamp
        return added

    def replan(self) -> None:
        """Make the next `plan` read the input again (ids were freed for another try)."""
        self._planned = None

    # -- submitting

    def _upload(self, row: ChunkRow, key: KeyClient) -> ChunkRow:
        name = f"opt-{self.journal.token}-{row.filename}"
        for found in key.client.files.list(purpose="batch"):
            if found.filename == name:  # uploaded before a crash could record it
                return self.journal.update(row.chunk, file_id=found.id, state="uploaded")
        data = io.BytesIO()
        sent: set[str] = set()
        for item in self._lines.items(row.lines, self.endpoint):
            data.write(batch_line(item))
            sent.add(custom_id_of(item))
        if sent != set(self.journal.iter_items(row.chunk)):
            raise ValueError(
                f"{self._lines.path}: lines planned for batch file {row.chunk} changed since "
                "they were planned (only appending lines to the input is safe while a job runs)"
            )
        uploaded = key.client.files.create(file=(name, data.getvalue()), purpose="batch")
        return self.journal.update(row.chunk, file_id=uploaded.id, state="uploaded")

    def _create(self, row: ChunkRow, key: KeyClient) -> bool:
        """Create the chunk's batch, or find the one a crash left unrecorded: True when made."""
        assert row.file_id is not None and row.key_id is not None
        metadata = {
            "opt_job": self.journal.token,
            "opt_chunk": str(row.chunk),
            "opt_attempt": str(row.attempt),
        }
        if row.state == "creating":  # a crash may have left a batch unrecorded: find it
            for batch in key.client.batches.list():
                if batch.metadata == metadata:
                    self.journal.record_batch(row.chunk, batch.id, row.attempt, row.key_id)
                    return False
        file_id, key_id = row.file_id, row.key_id
        row = self.journal.update(row.chunk, state="creating")
        batch = key.client.batches.create(
            input_file_id=file_id,
            endpoint="/v1" + RawRequest.PATHS[row.endpoint],  # type: ignore[arg-type]
            completion_window="24h",
            metadata=metadata,
        )
        logger.info("chunk %d: batch %s on key %s", row.chunk, batch.id, key.masked)
        self.journal.record_batch(row.chunk, batch.id, row.attempt, key_id)
        return True

    def submit(self) -> int:
        """Plan what is new, then upload and create batches as far as the queues allow;
        returns how many batches were created. Chunks that fit in no queue now stay planned."""
        self.plan()
        created = 0
        for row in self.journal.chunks("planned", "uploading", "uploaded", "creating"):
            if row.state == "planned":
                assigned = self._queues.assign(row)
                if assigned is None:
                    continue
                row = assigned
            queue, key_id = row.queue, row.key_id
            assert key_id is not None and queue is not None
            key = self._clients.get(key_id)
            if row.state == "uploading":
                row = self._upload(row, key)
            if row.state == "uploaded" and not self._queues.fits(queue, row, reserved=False):
                continue
            created += self._create(row, key)
        return created
