"""The Batch API: a JSONL job sent as batches at half price, resumable across crashes.

`BatchJob` takes the JSONL job's input and writes its result lines; `BatchLimits` sets how input
is split into batch files (OpenAI's 50,000 requests and 200 MB per file, and a model's
enqueued-token limit per project); `BatchJobStatus` is what `BatchJob.status` reports. The
journal (`journal`) records every file and batch id before the job relies on it.
"""

from .job import BatchJob, BatchJobStatus
from .planner import BatchLimits

__all__ = ["BatchJob", "BatchJobStatus", "BatchLimits"]
