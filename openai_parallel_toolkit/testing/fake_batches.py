"""The Batch API of the fake server: ``/v1/files`` and ``/v1/batches``, timed by its clock.

`FakeBatches` holds the uploaded files and the batches of every project (the server's limit
group of a key: keys of one project see the same files and batches, keys of another get 404s,
as on OpenAI). Time moves only with the server's clock: a batch stays ``validating`` for
`BatchSettings.validate_seconds`, then ``in_progress`` for `processing_seconds` while its lines are
answered in order, then ``finalizing`` for `finalize_seconds`, then ``completed``. A test with a
`FakeClock` advances that clock instead of sleeping. Other endings:

- ``failed``: the input file is not a valid batch file (each bad line is named in ``errors``), or
  the model's enqueued-token limit of the project is exceeded (``token_limit_exceeded``, with
  OpenAI's text ``... Limit: 2,000,000 enqueued tokens ...``). Enqueued tokens are the input
  tokens of the project's batches of that model that are ``in_progress`` or ``finalizing``.
- ``expired``: `expire_share` of the lines (chosen at random) are never run; at the end of
  processing the batch expires with the answered lines in its output file and the others in
  its error file with code ``batch_expired``.
- ``cancelling`` → ``cancelled``: after a cancel the lines answered so far keep their answers,
  the rest get ``batch_cancelled``.

Each answer is the one the online endpoint gives (the server's own echo); a line whose answer is
not a 2xx (a marker such as ``[[server_error]]``, a bad body, or `fail_share` of the lines chosen
at random) goes to the error file as ``{"response": {"status_code", "request_id", "body"}}``.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs

from ..clock import Clock

__all__ = ["BATCH_ENDPOINTS", "Answer", "BatchSettings", "FakeBatches"]

BATCH_ENDPOINTS: frozenset[str] = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"}
)
"""The endpoints a fake batch may run."""

Answer = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any], int]]
"""(url, body) → (HTTP status, JSON body, input tokens): how the server answers one line."""

_EXPIRED = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}
_CANCELLED = {
    "code": "batch_cancelled",
    "message": "This request was not executed because the batch was cancelled.",
}
_SERVER_ERROR = {
    "error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}
_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True, kw_only=True)
class BatchSettings:
    """How the fake Batch API behaves; replace `FakeBatches.settings` to change it mid-test.

    `enqueued_token_limits` maps a model to its enqueued-token limit per project (models not
    named have none). `max_requests` and `max_file_bytes` are OpenAI's 50,000 lines and 200 MB,
    smaller in tests that check splitting. `seed` fixes which lines fail or expire.
    """

    validate_seconds: float = 1.0
    processing_seconds: float = 60.0
    finalize_seconds: float = 1.0
    expire_share: float = 0.0
    fail_share: float = 0.0
    enqueued_token_limits: Mapping[str, int] = field(default_factory=dict)
    max_requests: int = 50_000
    max_file_bytes: int = 200 * 1024 * 1024
    seed: int | None = None


class _ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


@dataclass
class _File:
    id: str
    project: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class _Batch:
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


class FakeBatches:
    """The files and batches of the fake server; thread-safe, timed by `clock`.

    `answer` runs one line as the online endpoint would. `created` counts the batches created
    (per project), so tests can prove a job never submitted the same work twice.
    """

    def __init__(self, answer: Answer, clock: Clock, settings: BatchSettings | None = None) -> None:
        self.settings = settings or BatchSettings()
        self._answer = answer
        self._clock = clock
        self._epoch = time.time() - clock.monotonic()
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._batches: dict[str, _Batch] = {}
        self._ids = itertools.count(1)
        self._rng = random.Random(self.settings.seed)
        self.created: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"FakeBatches(files={len(self._files)}, batches={len(self._batches)})"

    def statuses(self) -> dict[str, str]:
        """The status of every batch now, by id (all projects)."""
        with self._lock:
            self._advance(self._clock.monotonic())
            return {batch.id: batch.status for batch in self._batches.values()}

    # ------------------------------------------------------------------ HTTP

    def handle(
        self, method: str, path: str, query: bytes, content_type: str, raw: bytes, project: str
    ) -> tuple[int, bytes, str]:
        """Serve one request under ``/v1/files`` or ``/v1/batches``: (status, body, media type)."""
        with self._lock:
            now = self._clock.monotonic()
            self._advance(now)
            try:
                return self._route(method, path, query, content_type, raw, project, now)
            except _ApiError as exc:
                error = {
                    "message": exc.message,
                    "type": "invalid_request_error",
                    "param": exc.param,
                    "code": None,
                }
                return exc.status, json.dumps({"error": error}).encode(), "application/json"

    def _route(
        self,
        method: str,
        path: str,
        query: bytes,
        content_type: str,
        raw: bytes,
        project: str,
        now: float,
    ) -> tuple[int, bytes, str]:
        parts = path.strip("/").split("/")[1:]  # without the leading "v1"
        params = {k: v[-1] for k, v in parse_qs(query.decode("latin-1")).items()}
        reply: Any
        if parts == ["files"] and method == "POST":
            reply = self._upload(content_type, raw, project, now)
        elif parts == ["files"] and method == "GET":
            purpose = params.get("purpose")
            reply = self._list(
                [
                    f.object()
                    for f in self._files.values()
                    if f.project == project and purpose in (None, f.purpose)
                ],
                {"limit": "10000", **params},
            )
        elif len(parts) == 2 and parts[0] == "files" and method == "GET":
            reply = self._file(parts[1], project).object()
        elif len(parts) == 2 and parts[0] == "files" and method == "DELETE":
            del self._files[self._file(parts[1], project).id]
            reply = {"id": parts[1], "object": "file", "deleted": True}
        elif len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
            if method != "GET":
                raise _ApiError(405, f"Invalid URL ({method} {path})")
            return 200, self._file(parts[1], project).data, "application/octet-stream"
        elif parts == ["batches"] and method == "POST":
            reply = self._object(self._create(_json(raw), project, now), now)
        elif parts == ["batches"] and method == "GET":
            mine = [b for b in self._batches.values() if b.project == project]
            reply = self._list([self._object(b, now) for b in reversed(mine)], params)
        elif len(parts) == 2 and parts[0] == "batches" and method == "GET":
            reply = self._object(self._batch(parts[1], project), now)
        elif len(parts) == 3 and parts[0] == "batches" and parts[2] == "cancel":
            if method != "POST":
                raise _ApiError(405, f"Invalid URL ({method} {path})")
            reply = self._object(self._cancel(self._batch(parts[1], project), now), now)
        else:
            raise _ApiError(404, f"Invalid URL ({method} {path})")
        return 200, json.dumps(reply).encode(), "application/json"

    @staticmethod
    def _list(data: list[dict[str, Any]], params: Mapping[str, str] | None = None) -> Any:
        params = params or {}
        after = params.get("after")
        if after is not None:
            ids = [item["id"] for item in data]
            data = data[ids.index(after) + 1 :] if after in ids else []
        limit = int(params.get("limit", "20") or 20)
        page, more = data[:limit], len(data) > limit
        first = page[0]["id"] if page else None
        last = page[-1]["id"] if page else None
        return {
            "object": "list",
            "data": page,
            "first_id": first,
            "last_id": last,
            "has_more": more,
        }

    def _file(self, file_id: str, project: str) -> _File:
        found = self._files.get(file_id)
        if found is None or found.project != project:
            raise _ApiError(404, f"No such File object: {file_id}", "id")
        return found

    def _batch(self, batch_id: str, project: str) -> _Batch:
        found = self._batches.get(batch_id)
        if found is None or found.project != project:
            raise _ApiError(404, f"No batch found with id '{batch_id}'.", "batch_id")
        return found

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):024x}"

    def _unix(self, at: float) -> int:
        return int(self._epoch + at)

    def _store(self, project: str, name: str, purpose: str, data: bytes, now: float) -> _File:
        stored = _File(self._new_id("file-"), project, name, purpose, data, self._unix(now))
        self._files[stored.id] = stored
        return stored

    def _upload(self, content_type: str, raw: bytes, project: str, now: float) -> Any:
        fields = _multipart(content_type, raw)
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if "file" not in fields:
            raise _ApiError(400, "Missing required parameter: 'file'.", "file")
        if purpose not in ("batch", "assistants", "fine-tune", "vision", "user_data"):
            raise _ApiError(400, f"Invalid value for 'purpose': {purpose!r}.", "purpose")
        name, data = fields["file"]
        if purpose == "batch" and len(data) > self.settings.max_file_bytes:
            limit = self.settings.max_file_bytes
            raise _ApiError(400, f"File is too large: at most {limit} bytes for purpose 'batch'.")
        return self._store(project, name or "upload.jsonl", purpose, data, now).object()

    def _create(self, body: Any, project: str, now: float) -> _Batch:
        if not isinstance(body, dict):
            raise _ApiError(400, "We could not parse the JSON body of your request.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str):
                raise _ApiError(400, f"Missing required parameter: '{name}'.", name)
        if body["completion_window"] != "24h":
            message = "Invalid value for 'completion_window': only '24h' is supported."
            raise _ApiError(400, message, "completion_window")
        if body["endpoint"] not in BATCH_ENDPOINTS:
            raise _ApiError(400, f"Invalid value for 'endpoint': {body['endpoint']}.", "endpoint")
        source = self._file(body["input_file_id"], project)
        if source.purpose != "batch":
            message = f"File {source.id} has purpose '{source.purpose}', expected 'batch'."
            raise _ApiError(400, message, "input_file_id")
        batch = _Batch(
            self._new_id("batch_"),
            project,
            body["endpoint"],
            source.id,
            body.get("metadata"),
            now,
        )
        batch.times["validating"] = now
        self._batches[batch.id] = batch
        self.created[project] = self.created.get(project, 0) + 1
        return batch

    def _cancel(self, batch: _Batch, now: float) -> _Batch:
        if batch.status in _TERMINAL or batch.status == "cancelling":
            if batch.status != "cancelled":
                message = f"Cannot cancel a batch with status '{batch.status}'."
                raise _ApiError(409, message)
            return batch
        if batch.status == "in_progress":
            self._run(batch, batch.done_by(now, self.settings))
        batch.status, batch.times["cancelling"] = "cancelling", now
        return batch

    # ------------------------------------------------------------------ time

    def _advance(self, now: float) -> None:
        """Apply every status change due by `now`, earliest first (so that the enqueued
        tokens a validation sees are those of that moment)."""
        while True:
            due = [
                (at, batch)
                for batch in self._batches.values()
                if (at := batch.next_event(self.settings)) is not None and at <= now
            ]
            if not due:
                break
            at, batch = min(due, key=lambda pair: pair[0])
            self._step(batch, at)
        for batch in self._batches.values():
            if batch.status == "in_progress":
                self._run(batch, batch.done_by(now, self.settings))

    def _step(self, batch: _Batch, at: float) -> None:
        if batch.status == "validating":
            self._validate(batch, at)
        elif batch.status == "in_progress":
            self._run(batch, len(batch.lines))
            expired = any(s is _EXPIRED for s in batch.skip.values())
            self._finish(batch, "expired" if expired else "finalizing", at)
        elif batch.status == "finalizing":
            batch.status, batch.times["completed"] = "completed", at
        else:  # cancelling
            self._finish(batch, "cancelled", at)

    def _validate(self, batch: _Batch, at: float) -> None:
        errors = self._parse(batch)
        if not errors:
            errors = self._check_queue(batch)
        if errors:
            batch.status, batch.errors, batch.times["failed"] = "failed", errors, at
            batch.lines = []
            return
        settings = self.settings
        count = len(batch.lines)
        chosen = self._rng.sample(range(count), round(count * settings.expire_share))
        batch.skip = dict.fromkeys(chosen, _EXPIRED)
        rest = [i for i in range(count) if i not in batch.skip]
        for index in self._rng.sample(rest, round(len(rest) * settings.fail_share)):
            batch.skip[index] = _SERVER_ERROR
        batch.status, batch.times["in_progress"] = "in_progress", at

    def _parse(self, batch: _Batch) -> list[dict[str, Any]]:
        source = self._files.get(batch.input_file_id)
        if source is None:
            return [_line_error("invalid_file", f"File {batch.input_file_id} was deleted.")]
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        models: set[str] = set()
        for number, raw in enumerate(source.data.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                errors.append(_line_error("invalid_json_line", "Invalid JSON line.", number))
                continue
            problem = _line_problem(line, batch.endpoint, seen)
            if problem is not None:
                errors.append(_line_error(problem[0], problem[1], number))
                continue
            seen.add(line["custom_id"])
            models.add(str(line["body"].get("model")))
            batch.lines.append((line["custom_id"], line["body"]))
        if not batch.lines and not errors:
            errors.append(_line_error("empty_file", "The batch input file is empty."))
        if len(batch.lines) > self.settings.max_requests:
            message = (
                f"The batch input file has {len(batch.lines)} requests; at most "
                f"{self.settings.max_requests:,} are allowed."
            )
            errors.append(_line_error("too_many_requests", message))
        if len(models) > 1:
            message = "All requests of a batch must use the same model: " + ", ".join(
                sorted(models)
            )
            errors.append(_line_error("mismatched_model", message))
        batch.model = next(iter(models), "")
        return errors

    def _check_queue(self, batch: _Batch) -> list[dict[str, Any]]:
        batch.tokens = sum(self._answer(batch.endpoint, body)[2] for _, body in batch.lines)
        limit = self.settings.enqueued_token_limits.get(batch.model)
        if limit is None:
            return []
        queued = sum(
            other.tokens
            for other in self._batches.values()
            if other.project == batch.project
            and other.model == batch.model
            and other.status in ("in_progress", "finalizing")
        )
        if queued + batch.tokens <= limit:
            return []
        message = (
            f"Enqueued token limit reached for {batch.model} in organization org-fake. "
            f"Limit: {limit:,} enqueued tokens. Please try submitting fewer tokens or wait "
            "until previously submitted jobs complete."
        )
        return [_line_error("token_limit_exceeded", message)]

    def _run(self, batch: _Batch, upto: int) -> None:
        """Answer the lines before `upto` not answered yet (lines to skip stay unanswered)."""
        for index in range(len(batch.answers), upto):
            custom_id, body = batch.lines[index]
            record: dict[str, Any] = {"id": self._new_id("batch_req_"), "custom_id": custom_id}
            forced = batch.skip.get(index)
            if forced is _EXPIRED:
                record.update(response=None, error=None)  # filled in at the end
            else:
                if forced is _SERVER_ERROR:
                    status, answer = 500, dict(_SERVER_ERROR)
                else:
                    status, answer, _ = self._answer(batch.endpoint, body)
                request_id = self._new_id("req_")
                response = {"status_code": status, "request_id": request_id, "body": answer}
                record.update(response=response, error=None)
                batch.failed += status >= 300
            batch.answers.append(record)

    def _finish(self, batch: _Batch, status: str, at: float) -> None:
        """Write the output and error files; lines never run get their reason."""
        reason = _CANCELLED if status == "cancelled" else _EXPIRED
        outputs: list[str] = []
        errors: list[str] = []
        for index, (custom_id, _) in enumerate(batch.lines):
            if index < len(batch.answers) and batch.answers[index]["response"] is not None:
                record = batch.answers[index]
            else:
                record = {
                    "id": self._new_id("batch_req_"),
                    "custom_id": custom_id,
                    "response": None,
                    "error": dict(reason),
                }
                batch.failed += 1
            ok = record["response"] is not None and record["response"]["status_code"] < 300
            (outputs if ok else errors).append(json.dumps(record) + "\n")
        for lines, suffix, kind in ((outputs, "output", "output_file_id"), (errors, "error", None)):
            if lines:
                data = "".join(lines).encode()
                made = self._store(
                    batch.project, f"{batch.id}_{suffix}.jsonl", "batch_output", data, at
                )
                if kind:
                    batch.output_file_id = made.id
                else:
                    batch.error_file_id = made.id
        batch.status, batch.times[status] = status, at

    def _object(self, batch: _Batch, now: float) -> dict[str, Any]:
        def stamp(name: str) -> int | None:
            at = batch.times.get(name)
            return None if at is None else self._unix(at)

        total = len(batch.lines)
        done = batch.done_by(now, self.settings)
        failed = sum(
            1 for r in batch.answers[:done] if r["response"] and r["response"]["status_code"] >= 300
        )
        if batch.status in _TERMINAL:
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
            "created_at": self._unix(batch.created),
            "in_progress_at": stamp("in_progress"),
            "expires_at": self._unix(batch.created + 24 * 3600),
            "finalizing_at": stamp("finalizing"),
            "completed_at": stamp("completed"),
            "failed_at": stamp("failed"),
            "expired_at": stamp("expired"),
            "cancelling_at": stamp("cancelling"),
            "cancelled_at": stamp("cancelled"),
            "request_counts": {"total": total, "completed": done - failed, "failed": failed},
            "metadata": batch.metadata,
        }


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _line_error(code: str, message: str, line: int | None = None) -> dict[str, Any]:
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
        return "mismatched_endpoint", f"The url must match the batch's endpoint {endpoint}."
    if not isinstance(line.get("body"), dict):
        return "missing_required_parameter", "Missing required parameter: 'body'."
    return None


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name → (file name, bytes)."""
    if not content_type.startswith("multipart/form-data"):
        raise _ApiError(400, "Expected a multipart/form-data body.")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), payload)
    return fields
