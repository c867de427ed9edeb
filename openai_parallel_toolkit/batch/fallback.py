"""``--fallback standard`` for batch jobs: lines the Batch API could not answer, sent online.

When a batch job has used up its tries on a line (it expired, was cancelled, its whole batch
failed, or it got a 5xx or 429 in every batch it was in), the line is sent online at the
standard tier instead of ending as an error. A line that failed because the request itself is
wrong (another 4xx) keeps its error: the online endpoint would refuse it the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..jobs.results import read_results
from ..jobs.sending import SendOptions, send_items
from ..jobs.source import Item, read_item, read_lines
from .job import BatchJob, error_records, retryable

__all__ = ["send_failed_online"]


def send_failed_online(job: BatchJob, *, progress: bool = False) -> int:
    """Send online the lines of `job` whose batch answers failed in a way worth another try;
    their error lines are replaced by the online results. Returns how many were sent.

    Raises `KeyboardInterrupt` when interrupted (the lines not sent keep no line, so the next
    run sends them again)."""
    existing = read_results(job.output)
    chosen = {
        record["id"]
        for record in error_records(job.output, existing.failed)
        if retryable(record["error"])
    }
    if not chosen:
        return 0
    existing.repair_and_drop(chosen)

    def items() -> Iterator[Item]:
        for number, _, raw in read_lines(job.input):
            item = read_item(number, raw, job.endpoint)
            if isinstance(item, Item) and item.item_id in chosen:
                yield item

    options = SendOptions(progress=progress)
    with open(job.output, "a", encoding="utf-8") as out:
        _, interrupted = send_items(
            items(), out, manager=job.manager, total=len(chosen), options=options
        )
    if interrupted:
        raise KeyboardInterrupt
    return len(chosen)
