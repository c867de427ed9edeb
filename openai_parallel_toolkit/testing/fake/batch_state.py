"""One fake batch: its state, its input lines checked, its object as ``/v1/batches`` shows it."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .batch_files import BatchApiError, StoredFile

if TYPE_CHECKING:
    from ..fake_batches import BatchSettings

__all__ = [
    "BATCH_ENDPOINTS",
    "CANCELLED",
    "EXPIRED",
    "SERVER_ERROR",
    "TERMINAL",
    "Batch",
    "batch_object",
    "checked_create_body",
    "line_error",
    "parse_lines",
    "queue_errors",
]

BATCH_ENDPOINTS: frozenset[str] = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"}
)
"""The endpoints a fake batch may run."""

EXPIRED = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}
CANCELLED = {
    "code": "batch_cancelled",
    "message": "This request was not executed because the batch was cancelled.",
}
SERVER_ERROR = {
    "error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass
class Batch:
    """One batch and where it is in its life (times are the server clock's)."""

    id: str
    project: str
    endpoint: str
    input_file_id: str
    metadata: Any
    created: float
    status: str = "validating"
    times: dict[str, float] = field(default_factory=dict)  # status → clock time it began
    errors: list[dict[str, Any]] | None = None
    lines: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    model: str = ""
    tokens: int = 0
    skip: dict[int, dict[str, Any]] = field(default_factory=dict)  # index → forced outcome
    answers: list[dict[str, Any]] = field(default_factory=list)  # result lines, in input order
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None

    def next_event(self, settings: BatchSettings) -> float | None:
        """When this batch changes status next, or None when it never will by itself."""
        if self.status == "validating":
            return self.created + settings.validate_seconds
        if self.status == "in_progress":
            return self.times["in_progress"] + settings.processing_seconds
        if self.status in ("finalizing", "cancelling"):
            return self.times[self.status] + settings.finalize_seconds
        return None

    def done_by(self, now: float, settings: BatchSettings) -> int:
        """How many lines are answered by `now` (lines run in order through processing)."""
        if self.status != "in_progress":
            return len(self.answers)
        if settings.processing_seconds <= 0:
            return len(self.lines)
        share = (now - self.times["in_progress"]) / settings.processing_seconds
        return max(0, min(len(self.lines), math.floor(len(self.lines) * share)))


def checked_create_body(body: Any) -> dict[str, Any]:
    """The body of a batch creation, once it names an input file, an endpoint a batch may run
    and the ``24h`` window; a 400 otherwise."""
    if not isinstance(body, dict):
        raise BatchApiError(400, "We could not parse the JSON body of your request.")
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str):
            raise BatchApiError(400, f"Missing required parameter: '{name}'.", name)
    if body["completion_window"] != "24h":
        message = "Invalid value for 'completion_window': only '24h' is supported."
        raise BatchApiError(400, message, "completion_window")
    if body["endpoint"] not in BATCH_ENDPOINTS:
        raise BatchApiError(400, f"Invalid value for 'endpoint': {body['endpoint']}.", "endpoint")
    return body


def queue_errors(batch: Batch, batches: Iterable[Batch], limit: int | None) -> list[dict[str, Any]]:
    """The error that fails `batch` when its tokens and those its project has enqueued for its
    model (batches ``in_progress`` or ``finalizing``) exceed `limit` (None: no limit)."""
    if limit is None:
        return []
    queued = sum(
        other.tokens
        for other in batches
        if other.project == batch.project
        and other.model == batch.model
        and other.status in ("in_progress", "finalizing")
    )
    if queued + batch.tokens <= limit:
        return []
    message = (
        f"Enqueued token limit reached for {batch.model} in organization org-fake. "
        f"Limit: {limit:,} enqueued tokens. Please try again once some in_progress batches "
        "have been completed."
    )
    return [line_error("token_limit_exceeded", message)]


def parse_lines(
    batch: Batch, source: StoredFile | None, settings: BatchSettings
) -> list[dict[str, Any]]:
    """Read the input lines of `batch` into `batch.lines` (and its model); the errors that fail
    it (none: it may run)."""
    if source is None:
        return [line_error("invalid_file", f"File {batch.input_file_id} was deleted.")]
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[str] = set()
    for number, raw in enumerate(source.data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            errors.append(
                line_error("invalid_json_line", "This line is not parseable as valid JSON.", number)
            )
            continue
        problem = _line_problem(line, batch.endpoint, seen)
        if problem is not None:
            errors.append(line_error(problem[0], problem[1], number))
            continue
        seen.add(line["custom_id"])
        models.add(str(line["body"].get("model")))
        batch.lines.append((line["custom_id"], line["body"]))
    if not batch.lines and not errors:
        errors.append(line_error("empty_file", "The batch input file is empty."))
    if len(batch.lines) > settings.max_requests:
        message = (
            f"The batch input file has {len(batch.lines)} requests; at most "
            f"{settings.max_requests:,} are allowed."
        )
        errors.append(line_error("too_many_tasks", message))
    if len(models) > 1:
        message = "All requests of a batch must use the same model: " + ", ".join(sorted(models))
        errors.append(line_error("model_mismatch", message))
    batch.model = next(iter(models), "")
    return errors


def batch_object(
    batch: Batch, now: float, settings: BatchSettings, unix: Callable[[float], int]
) -> dict[str, Any]:
    """The batch object at clock time `now`; `unix` turns clock times into timestamps."""

    def stamp(name: str) -> int | None:
        at = batch.times.get(name)
        return None if at is None else unix(at)

    total = len(batch.lines)
    done = batch.done_by(now, settings)
    failed = sum(
        1 for r in batch.answers[:done] if r["response"] and r["response"]["status_code"] >= 300
    )
    if batch.status in TERMINAL:
        failed = batch.failed
        done = total
    errors = None if batch.errors is None else {"object": "list", "data": batch.errors}
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": errors,
        "input_file_id": batch.input_file_id,
        "completion_window": "24h",
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": unix(batch.created),
        "in_progress_at": stamp("in_progress"),
        "expires_at": unix(batch.created + 24 * 3600),
        "finalizing_at": stamp("finalizing"),
        "completed_at": stamp("completed"),
        "failed_at": stamp("failed"),
        "expired_at": stamp("expired"),
        "cancelling_at": stamp("cancelling"),
        "cancelled_at": stamp("cancelled"),
        "request_counts": {"total": total, "completed": done - failed, "failed": failed},
        "metadata": batch.metadata,
    }


def line_error(code: str, message: str, line: int | None = None) -> dict[str, Any]:
    """One entry of a failed batch's ``errors``."""
    return {"code": code, "message": message, "param": None, "line": line}


def _line_problem(line: Any, endpoint: str, seen: set[str]) -> tuple[str, str] | None:
    """(code, message) of what makes one input line unusable, or None."""
    if not isinstance(line, dict):
        return "invalid_json_line", "Each line must be a JSON object."
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "missing_required_parameter", "Missing required parameter: 'custom_id'."
    if custom_id in seen:
        return "duplicate_custom_id", f"The custom_id '{custom_id}' is used more than once."
    if line.get("method") != "POST":
        return "invalid_request", "The 'method' of a batch request must be 'POST'."
    if line.get("url") != endpoint:
        return "url_mismatch", f"The url must match the batch's endpoint {endpoint}."
    if not isinstance(line.get("body"), dict):
        return "missing_required_parameter", "Missing required parameter: 'body'."
    return None
