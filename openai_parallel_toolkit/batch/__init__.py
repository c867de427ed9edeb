"""The Batch API: a JSONL job sent as batches at half price, resumable across crashes.

`BatchJob` takes the JSONL job's input and writes its result lines; `BatchLimits` sets how input
is split into batch files (OpenAI's 50,000 requests and 200 MB per file, and a model's
enqueued-token limit per project); `BatchJobStatus` is what `BatchJob.status` reports.
`run_batch_job` (``run --mode batch``) drives a job to the end: polling, collecting, and
submitting failed or expired lines again a bounded number of times. The
journal (`journal`) records every file and batch id before the job relies on it.
"""

from .job import BatchJob, BatchJobStatus
from .planner import BatchLimits
from .runner import BatchRunOptions, BatchRunSummary, run_batch_job

__all__ = [
    "BatchJob",
    "BatchJobStatus",
    "BatchLimits",
    "BatchRunOptions",
    "BatchRunSummary",
    "run_batch_job",
]
