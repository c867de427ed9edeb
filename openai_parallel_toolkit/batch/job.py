"""`BatchJob`: a JSONL job sent through the Batch API, to submit now and collect later.

The input and output are those of the online JSONL job (`run_jsonl_job`): the same request
lines, the same result lines. Every uploaded file id and batch id is in the journal before the
job relies on it, and the step about to be taken is recorded before it is taken, so that a
re-run after a crash finds the file or batch a crash left unrecorded (by its file name or batch
metadata, both carrying the journal's token) instead of making another: no chunk is ever
submitted twice, and batches already paid for are polled, not resubmitted.

Planning and submitting are the `Submitter`'s (`submitter`), writing result lines the
`Collector`'s (`collector`); the job object polls, cancels and plans retries itself.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..jobs.results import read_results
from ..keys import APIKeyManager, resolve_manager
from ..prices import usd
from ..stats import UsageReport
from .clients import BatchClients
from .collector import Collector
from .journal import BatchJournal, ChunkRow, journal_path
from .lines import InputLines
from .planner import BatchLimits
from .queues import TERMINAL, Queues
from .submitter import Submitter
from .usage import job_usage

__all__ = ["TERMINAL", "BatchJob", "BatchJobStatus", "error_records", "retryable"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchJobStatus:
    """Where a batch job stands: chunks by journal state, batches by API status, requests."""

    chunks: dict[str, int]
    batches: dict[str, int]
    requests: int
    collected_requests: int
    cancelled: bool = False
    created: int = 0
    """Batches this job ever created (those that failed on a queue limit included)."""
    cost: float = 0.0
    """USD of the answers collected so far, at the batch price."""
    standard_cost: float = 0.0
    """USD the same answers would have cost at the standard tier."""

    @property
    def in_progress(self) -> int:
        """Batches in flight now (not finished yet)."""
        return sum(n for status, n in self.batches.items() if status not in TERMINAL)

    @property
    def done(self) -> int:
        """Chunks whose batch finished (collected or ready to be)."""
        finished = sum(n for status, n in self.batches.items() if status in TERMINAL)
        return finished + self.chunks.get("collected", 0)

    @property
    def saved(self) -> float:
        """Estimated USD saved against the standard tier, on the answers collected so far."""
        return max(0.0, self.standard_cost - self.cost)

    @property
    def finished(self) -> bool:
        """True when every planned chunk has been collected, or the job was cancelled and
        none of its batches is left to collect (chunks never submitted stay so)."""
        if self.cancelled and not self.chunks.get("submitted"):
            return True
        return sum(self.chunks.values()) == self.chunks.get("collected", 0)

    def __str__(self) -> str:
        chunks = ", ".join(f"{n} {state}" for state, n in sorted(self.chunks.items()))
        batches = ", ".join(f"{n} {status}" for status, n in sorted(self.batches.items()))
        return (
            f"{self.collected_requests}/{self.requests} requests collected; "
            f"batches: {self.created} submitted, {self.in_progress} in progress, "
            f"{self.done} done ({batches or 'none'}); chunks: {chunks or 'none'}; "
            f"cost {usd(self.cost)} at the batch price, est. {usd(self.saved)} saved"
        )


class BatchJob:
    """Send the requests of `input` (a JSONL file) through the Batch API, results to `output`.

    `submit()` plans the requests not answered in `output` yet into batch files within
    `limits`, uploads them over the pool's keys and creates their batches, as far as each
    project's enqueued-token queue allows (call it again later for the rest); `status()` polls;
    `collect()` writes the result lines of finished batches; `cancel()` cancels the batches in
    flight. The journal (default: beside `output`) makes each of these safe to repeat.
    """

    def __init__(
        self,
        input: str | os.PathLike[str],
        output: str | os.PathLike[str],
        *,
        manager: APIKeyManager | None = None,
        endpoint: str | None = None,
        limits: BatchLimits | None = None,
        journal: str | os.PathLike[str] | None = None,
    ) -> None:
        self.input = Path(input)
        self.output = Path(output)
        self.endpoint = endpoint
        self.limits = limits or BatchLimits()
        self.manager = resolve_manager(manager)
        self.journal = BatchJournal(Path(journal) if journal else journal_path(self.output))
        for name, value in (("input", self.input), ("output", self.output)):
            if self.journal.get(name) is None:  # for `from_journal`, and the batch command
                self.journal.put(name, str(value.resolve()))
        if endpoint is not None and self.journal.get("endpoint") is None:
            self.journal.put("endpoint", endpoint)
        self._clients = BatchClients(self.manager)
        self._queues = Queues(self.journal, self.limits, self._clients)
        lines = InputLines(self.input)
        self._submitter = Submitter(
            self.journal,
            self._clients,
            self._queues,
            lines,
            output=self.output,
            endpoint=endpoint,
            limits=self.limits,
        )
        self._collector = Collector(
            self.journal,
            self._clients,
            lines,
            output=self.output,
            endpoint=endpoint,
            prices=self.manager.prices,
        )

    @classmethod
    def from_journal(
        cls, journal: str | os.PathLike[str], *, manager: APIKeyManager | None = None
    ) -> BatchJob:
        """The job a journal belongs to (its input, output and endpoint as recorded)."""
        path = Path(journal)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such batch journal")
        recorded = BatchJournal(path)
        try:
            input, output = recorded.get("input"), recorded.get("output")
            endpoint = recorded.get("endpoint")
        finally:
            recorded.close()
        if input is None or output is None:
            raise ValueError(f"{path}: not the journal of a batch job")
        return cls(input, output, manager=manager, endpoint=endpoint, journal=path)

    def __repr__(self) -> str:
        return f"BatchJob({str(self.input)!r} -> {str(self.output)!r})"

    def close(self) -> None:
        """Close the journal and the clients."""
        self.journal.close()
        self._clients.close()

    def __enter__(self) -> BatchJob:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def plan(self) -> int:
        """Record chunks for the requests not planned yet; returns how many chunks were added."""
        return self._submitter.plan()

    def submit(self) -> int:
        """Plan what is new, then upload and create batches as far as the queues allow.

        Returns how many batches were created by this call. Chunks that do not fit in any
        queue now stay planned; call `submit` again once batches finish.
        """
        if self.journal.get("cancelled"):
            return 0
        return self._submitter.submit()

    # -- polling, collecting, cancelling

    def usage(self) -> UsageReport:
        """Tokens in / out / cached and cost (at the batch price) of the answers collected so
        far, in all, per model and per key (masked)."""
        return job_usage(self.journal)

    def status(self) -> BatchJobStatus:
        """Poll every batch in flight and return where the job stands.

        A batch that failed on its project's enqueued-token limit is not the job's failure:
        the limit it reports is learned and the chunk waits to be created again by `submit`.
        """
        for row in self.journal.chunks("submitted"):
            if row.batch_status in TERMINAL or row.batch_id is None or row.key_id is None:
                continue
            key = self._clients.get(row.key_id)
            batch = key.client.batches.retrieve(row.batch_id)
            errors = batch.errors.model_dump() if batch.errors is not None else None
            if batch.status == "failed" and _queue_limited(errors):
                self._requeue(row, errors)
                continue
            self.journal.update(
                row.chunk,
                batch_status=batch.status,
                output_file_id=batch.output_file_id,
                error_file_id=batch.error_file_id,
            )
            if batch.status == "failed":
                self.journal.put(f"errors/{row.chunk}", json.dumps(errors))
        return self._snapshot()

    def _requeue(self, row: ChunkRow, errors: Any) -> None:
        self._queues.learn(row, errors)
        logger.info("chunk %d: over the enqueued-token limit; it waits", row.chunk)
        self.journal.update(
            row.chunk, state="uploaded", batch_id=None, batch_status=None, attempt=row.attempt + 1
        )

    def _snapshot(self) -> BatchJobStatus:
        rows = self.journal.chunks()
        return BatchJobStatus(
            chunks=dict(Counter(r.state for r in rows)),
            batches=dict(
                Counter(
                    r.batch_status or "pending"
                    for r in rows
                    if r.batch_id and r.state != "collected"
                )
            ),
            requests=sum(r.requests for r in rows),
            collected_requests=sum(r.requests for r in rows if r.state == "collected"),
            cancelled=self.journal.get("cancelled") is not None,
            created=len(self.journal.batch_history()),
            cost=float(self.journal.get("cost/batch") or 0),
            standard_cost=float(self.journal.get("cost/standard") or 0),
        )

    def collect(self) -> int:
        """Write the result lines of every finished batch not collected yet; returns how many
        lines were written. Ids that already have a line (a collect cut short) are skipped."""
        self.status()
        return self._collector.collect()

    def retry_failed(self, max_retries: int) -> int:
        """Plan again the ids whose answer failed in a way worth another try (never run:
        expired, cancelled, their whole batch failed; or a 5xx or 429) at most
        `max_retries` times each; their error lines are dropped. Returns how many."""
        if self.journal.get("cancelled"):
            return 0
        existing = read_results(self.output)
        chosen: set[Any] = set()
        for record in error_records(self.output, existing.failed):
            custom_id = json.dumps(record["id"], ensure_ascii=False)
            if retryable(record["error"]) and self.journal.retries(custom_id) < max_retries:
                self.journal.forget(custom_id)  # first: an id must never be lost in between
                chosen.add(record["id"])
        if chosen:
            existing.repair_and_drop(chosen)
            self._submitter.replan()  # freed ids: the next `plan` reads the input again
        return len(chosen)

    def cancel(self) -> int:
        """Cancel every batch in flight and submit nothing more; returns how many were
        cancelled. Their answers so far are still collected by `collect`."""
        self.journal.put("cancelled", "1")
        cancelled = 0
        for row in self.journal.chunks("submitted"):
            if row.batch_status in TERMINAL or row.batch_id is None or row.key_id is None:
                continue
            batch = self._clients.get(row.key_id).client.batches.cancel(row.batch_id)
            self.journal.update(row.chunk, batch_status=batch.status)
            cancelled += 1
        return cancelled


def error_records(path: Path, failed: set[Any]) -> Iterator[dict[str, Any]]:
    """The result lines of `path` with an error, for the ids in `failed`."""
    if not failed or not path.exists():
        return
    with open(path, encoding="utf-8") as file:
        for raw in file:
            if raw.endswith("\n"):
                record = json.loads(raw)
                if record.get("id") in failed and isinstance(record.get("error"), dict):
                    yield record


def retryable(error: dict[str, Any]) -> bool:
    """True for failures another batch may not repeat; a 4xx other than 429 is the
    request's own fault and stays."""
    status = error.get("status_code")
    if isinstance(status, int):
        return status == 429 or status >= 500
    return True  # never run: expired, cancelled, or its whole batch failed


def _queue_limited(errors: Any) -> bool:
    data = errors.get("data") if isinstance(errors, dict) else None
    return any(isinstance(e, dict) and e.get("code") == "token_limit_exceeded" for e in data or [])
