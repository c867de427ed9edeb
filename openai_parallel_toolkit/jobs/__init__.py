"""JSONL jobs: a file of request bodies in, a file of results out, resumable item by item.

Each input line is a request body (model, messages / prompt / input, any parameters) with an
optional ``metadata`` value and an optional ``custom_id`` (a non-empty string), as the OpenAI
cookbook's parallel processor and the Batch API read them. Each output line is
``{"id": ..., "request_hash": ..., "metadata": ..., "response": {...}}`` or the same with
``"error": {...}``, written and flushed as the item finishes; the id is the ``custom_id``, else
the line number (a number, so it never collides with a ``custom_id``).

Resuming is safe, not just fast:

- An output file that holds anything but result lines (the input itself, another file, a file
  that is not UTF-8) is refused before anything is sent, and left as it is.
- An answer counts as done only for the very request it answered: each result line carries a
  hash of its request (endpoint and body), so the results of another input are refused, and a
  line changed since it was answered is refused too, or sent again with ``redo_changed``.
- Failed items are tried again (their error lines are dropped first, so every id appears once);
  a torn last line left by a crash is cut off.
- A bad line (invalid UTF-8, not a JSON object, no endpoint, a repeated ``custom_id``) is
  reported by number and skipped; the rest runs. A UTF-8 BOM at the start is ignored.
- A request asking for ``"stream": true`` is sent without streaming: its result is the whole
  response object, as for every other line.

The input is read as a stream: memory holds the ids and the byte offsets of the lines to send,
never the bodies of the whole file.

`run_shared_jsonl_job` (``run --worker``) shares one job among several workers through Redis;
see `distributed`.
"""

from .distributed import run_shared_jsonl_job
from .results import ResultsFileError, read_results
from .runner import JobSummary, run_jsonl_job
from .source import infer_endpoint, request_hash

__all__ = [
    "JobSummary",
    "ResultsFileError",
    "infer_endpoint",
    "read_results",
    "request_hash",
    "run_jsonl_job",
    "run_shared_jsonl_job",
]
