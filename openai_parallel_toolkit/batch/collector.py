"""Collecting a batch job: the result lines of its finished batches appended to the output.

Each chunk's lines are written, flushed and synced before the journal marks it ``collected``;
ids that already have a line (a collect cut short) are skipped, so collecting again is safe.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO

from ..jobs.results import read_results
from ..prices import PriceTable
from .clients import BatchClients
from .collect import batch_error, parse_records, result_lines
from .journal import BatchJournal, ChunkRow
from .lines import InputLines
from .planner import custom_id_of
from .queues import TERMINAL
from .usage import ChunkUsage

__all__ = ["Collector"]


class Collector:
    """Writes the result lines of `journal`'s finished batches to `output`, and adds their
    costs (at `prices`) to the journal's totals."""

    def __init__(
        self,
        journal: BatchJournal,
        clients: BatchClients,
        lines: InputLines,
        *,
        output: Path,
        endpoint: str | None,
        prices: PriceTable,
    ) -> None:
        self.journal = journal
        self.output = output
        self.endpoint = endpoint
        self.prices = prices
        self._clients = clients
        self._lines = lines

    def __repr__(self) -> str:
        return f"Collector(-> {str(self.output)!r})"

    def collect(self) -> int:
        """Write the result lines of every finished batch (as last polled) not collected yet;
        returns how many lines were written."""
        ready = [
            row
            for row in self.journal.chunks("submitted")
            if row.batch_status in TERMINAL and row.key_id is not None
        ]
        if not ready:
            return 0  # nothing to write: the results file is not even read
        existing = read_results(self.output)
        existing.repair_and_drop(set())
        written: dict[Any, str] = dict(existing.hashes)
        count = 0
        with open(self.output, "a", encoding="utf-8") as out:
            for row in ready:
                count += self._write_chunk(row, out, written)
        return count

    def _write_chunk(self, row: ChunkRow, out: TextIO, written: dict[Any, str]) -> int:
        """Write one finished chunk's lines (ids in `written` skipped, then added), sync them,
        add its costs and mark it collected; returns how many lines were written."""
        items = {custom_id_of(item): item for item in self._lines.items(row.lines, self.endpoint)}
        records = self._records(row)
        seen = {str(r.get("custom_id")) for r in records}
        failure: dict[str, Any] = {"response": None, "error": None}
        if row.batch_status == "failed":
            errors = self.journal.get(f"errors/{row.chunk}")
            failure["error"] = batch_error(None if errors is None else json.loads(errors))
        records += [{"custom_id": c, **failure} for c in items if c not in seen]
        count = 0
        cost = standard = 0.0
        usage = ChunkUsage(self._clients.get(row.key_id).masked if row.key_id else "(unknown key)")
        for outcome in result_lines(records, items, written, self.prices):
            out.write(outcome.line)
            written[outcome.item.item_id] = outcome.item.request_hash
            count += 1
            cost += outcome.cost or 0.0
            standard += outcome.standard or 0.0
            usage.add(outcome)
        out.flush()
        os.fsync(out.fileno())
        self._add_costs(cost, standard)
        self.journal.put(f"usage/{row.chunk}", usage.to_json())
        self.journal.update(row.chunk, state="collected")
        return count

    def _records(self, row: ChunkRow) -> list[dict[str, Any]]:
        assert row.key_id is not None
        key = self._clients.get(row.key_id)
        records: list[dict[str, Any]] = []
        for file_id in (row.output_file_id, row.error_file_id):
            if file_id is not None:
                records.extend(parse_records(key.client.files.content(file_id).text))
        return records

    def _add_costs(self, cost: float, standard: float) -> None:
        """Add a chunk's costs to the job's totals (a crash right after its lines were
        written loses its share: the totals are estimates for progress lines, never bills)."""
        for name, value in (("cost/batch", cost), ("cost/standard", standard)):
            self.journal.put(name, repr(float(self.journal.get(name) or 0) + value))
