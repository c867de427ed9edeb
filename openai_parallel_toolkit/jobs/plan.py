"""Before a JSONL job sends anything: which lines to send, which are done, which are bad.

One pass over the request file, set against what the results file already holds. Only line
numbers and byte offsets of the lines to send are kept, so memory grows with the ids, never with
the bodies.
"""

from __future__ import annotations

import logging
import os
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .results import ExistingResults, ResultsFileError, read_results
from .source import BadLine, Item, ItemId, read_item, read_lines

__all__ = ["JobPlan", "check_paths", "check_plan", "plan_job", "prepare_job"]

# Bad lines are logged under the runner's name: the command line looks there to tell whether
# they were already shown.
logger = logging.getLogger("openai_parallel_toolkit.jobs.runner")


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


def check_paths(source: Path, target: Path) -> None:
    """Refuse a missing input, a folder, or an output that is the input itself."""
    if not source.exists():
        raise FileNotFoundError(f"input file not found: {source}")
    if source.is_dir():
        raise IsADirectoryError(f"input is a directory, not a JSONL file: {source}")
    if target.exists() and os.path.samefile(source, target):
        raise ResultsFileError(
            f"{target}: the output is the input file; it was left unchanged "
            "(choose another output file)"
        )


def check_plan(plan: JobPlan, existing: ExistingResults, redo_changed: bool) -> None:
    """Refuse a results file that answers other requests than these; it stays as it is."""
    target = existing.path
    if len(existing) and not plan.matched:
        raise ResultsFileError(
            f"{target}: none of its {len(existing)} results answers a request of "
            f"{plan.source} as it is now (results of another job, or every line changed); "
            "it was left unchanged (choose another output file)"
        )
    if plan.changed and not redo_changed:
        line, item_id = plan.changed[0]
        raise ResultsFileError(
            f"{target}: {len(plan.changed)} requests changed since they were answered "
            f"(first: line {line}, id {item_id!r}); it was left unchanged (run with "
            "--redo-changed to send them again and drop their old answers, or choose another "
            "output file)"
        )


def prepare_job(
    source: Path, target: Path, endpoint: str | None, redo_changed: bool
) -> tuple[JobPlan, ExistingResults]:
    """Plan `source` against the results in `target`, refuse or repair `target`, log bad lines.

    Raises `ResultsFileError` (nothing changed) when `target` is not the results of this job;
    otherwise `target` is left holding only lines that stay: a torn last line is cut, and the
    lines of items about to be sent again are dropped.
    """
    existing = read_results(target)
    plan = plan_job(source, existing, endpoint)
    check_plan(plan, existing, redo_changed)
    existing.repair_and_drop(plan.drop)
    for bad in plan.bad:
        logger.info("skipping %s", bad)
    return plan, existing
