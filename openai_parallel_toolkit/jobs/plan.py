"""Before a JSONL job sends anything: which lines to send, which are done, which are bad.

One pass over the request file, set against what the results file already holds. Only line
numbers and byte offsets of the lines to send are kept, so memory grows with the ids, never with
the bodies.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .results import ExistingResults
from .source import BadLine, Item, ItemId, read_item, read_lines

__all__ = ["JobPlan", "plan_job"]


@dataclass
class JobPlan:
    """The outcome of the planning pass."""

    source: Path
    endpoint: str | None
    lines: array[int] = field(default_factory=lambda: array("q"))
    offsets: array[int] = field(default_factory=lambda: array("q"))
    skipped: int = 0
    matched: int = 0
    bad: list[BadLine] = field(default_factory=list)
    changed: list[tuple[int, ItemId]] = field(default_factory=list)  # (line, id)
    drop: set[ItemId] = field(default_factory=set)  # ids whose old result lines must go

    def __len__(self) -> int:
        return len(self.lines)

    def items(self) -> Iterator[Item]:
        """The items to send, read again from the file one by one."""
        with open(self.source, "rb") as file:
            for number, offset in zip(self.lines, self.offsets, strict=True):
                file.seek(offset)
                raw = file.readline()
                if number == 1:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")
                item = read_item(number, raw, self.endpoint)
                if isinstance(item, Item):  # a line changed since planning is simply left
                    yield item


def plan_job(source: Path, existing: ExistingResults, endpoint: str | None) -> JobPlan:
    """Set each line of `source` against `existing`: to send, done, changed or bad."""
    plan = JobPlan(source, endpoint)
    seen: dict[str, int] = {}  # custom id -> the line that has it
    for number, offset, raw in read_lines(source):
        item = read_item(number, raw, endpoint)
        if isinstance(item, BadLine):
            plan.bad.append(item)
            continue
        if isinstance(item.item_id, str):
            first = seen.setdefault(item.item_id, number)
            if first != number:
                reason = f"custom_id {item.item_id!r} is already used by line {first}"
                plan.bad.append(BadLine(number, reason))
                continue
        recorded = existing.hashes.get(item.item_id)
        if recorded is not None:
            if recorded != item.request_hash:
                plan.changed.append((number, item.item_id))
            else:
                plan.matched += 1
                if item.item_id not in existing.failed:
                    plan.skipped += 1
                    continue
            plan.drop.add(item.item_id)  # failed or changed: its old line goes, it is sent again
        plan.lines.append(number)
        plan.offsets.append(offset)
    return plan
