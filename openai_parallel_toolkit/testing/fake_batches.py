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
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from ..clock import Clock
from .fake.batch_files import BatchApiError, FileStore, page
from .fake.batch_state import (
    BATCH_ENDPOINTS,
    CANCELLED,
    EXPIRED,
    SERVER_ERROR,
    TERMINAL,
    Batch,
    batch_object,
    checked_create_body,
    parse_lines,
    queue_errors,
)

__all__ = ["BATCH_ENDPOINTS", "Answer", "BatchSettings", "FakeBatches"]


Answer = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any], int]]
"""(url, body) → (HTTP status, JSON body, input tokens): how the server answers one line."""


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
        self._files = FileStore(self._new_id, self._unix)
        self._batches: dict[str, Batch] = {}
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
            except BatchApiError as exc:
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
        files = self._files
        reply: Any
        if parts == ["files"] and method == "POST":
            max_bytes = self.settings.max_file_bytes
            reply = files.upload(content_type, raw, project, now, max_bytes).object()
        elif parts == ["files"] and method == "GET":
            listing = files.listing(project, params.get("purpose"))
            reply = page(listing, {"limit": "10000", **params})
        elif len(parts) == 2 and parts[0] == "files" and method == "GET":
            reply = files.get(parts[1], project).object()
        elif len(parts) == 2 and parts[0] == "files" and method == "DELETE":
            files.delete(parts[1], project)
            reply = {"id": parts[1], "object": "file", "deleted": True}
        elif len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
            if method != "GET":
                raise BatchApiError(405, f"Invalid URL ({method} {path})")
            return 200, files.get(parts[1], project).data, "application/octet-stream"
        elif parts == ["batches"] and method == "POST":
            reply = self._object(self._create(_json(raw), project, now), now)
        elif parts == ["batches"] and method == "GET":
            mine = [b for b in self._batches.values() if b.project == project]
            reply = page([self._object(b, now) for b in reversed(mine)], params)
        elif len(parts) == 2 and parts[0] == "batches" and method == "GET":
            reply = self._object(self._batch(parts[1], project), now)
        elif len(parts) == 3 and parts[0] == "batches" and parts[2] == "cancel":
            if method != "POST":
                raise BatchApiError(405, f"Invalid URL ({method} {path})")
            reply = self._object(self._cancel(self._batch(parts[1], project), now), now)
        else:
            raise BatchApiError(404, f"Invalid URL ({method} {path})")
        return 200, json.dumps(reply).encode(), "application/json"

    def _batch(self, batch_id: str, project: str) -> Batch:
        found = self._batches.get(batch_id)
        if found is None or found.project != project:
            raise BatchApiError(404, f"No batch found with id '{batch_id}'.", "batch_id")
        return found

    def _object(self, batch: Batch, now: float) -> dict[str, Any]:
        return batch_object(batch, now, self.settings, self._unix)

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):024x}"

    def _unix(self, at: float) -> int:
        return int(self._epoch + at)

    def _create(self, body: Any, project: str, now: float) -> Batch:
        body = checked_create_body(body)
        source = self._files.get(body["input_file_id"], project)
        if source.purpose != "batch":
            message = f"File {source.id} has purpose '{source.purpose}', expected 'batch'."
            raise BatchApiError(400, message, "input_file_id")
        batch = Batch(
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

    def _cancel(self, batch: Batch, now: float) -> Batch:
        if batch.status in TERMINAL or batch.status == "cancelling":
            if batch.status != "cancelled":
                message = f"Cannot cancel a batch with status '{batch.status}'."
                raise BatchApiError(409, message)
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

    def _step(self, batch: Batch, at: float) -> None:
        if batch.status == "validating":
            self._validate(batch, at)
        elif batch.status == "in_progress":
            self._run(batch, len(batch.lines))
            expired = any(s is EXPIRED for s in batch.skip.values())
            self._finish(batch, "expired" if expired else "finalizing", at)
        elif batch.status == "finalizing":
            batch.status, batch.times["completed"] = "completed", at
        else:  # cancelling
            self._finish(batch, "cancelled", at)

    def _validate(self, batch: Batch, at: float) -> None:
        errors = parse_lines(batch, self._files.find(batch.input_file_id), self.settings)
        if not errors:
            errors = self._check_queue(batch)
        if errors:
            batch.status, batch.errors, batch.times["failed"] = "failed", errors, at
            batch.lines = []
            return
        settings = self.settings
        count = len(batch.lines)
        chosen = self._rng.sample(range(count), round(count * settings.expire_share))
        batch.skip = dict.fromkeys(chosen, EXPIRED)
        rest = [i for i in range(count) if i not in batch.skip]
        for index in self._rng.sample(rest, round(len(rest) * settings.fail_share)):
            batch.skip[index] = SERVER_ERROR
        batch.status, batch.times["in_progress"] = "in_progress", at

    def _check_queue(self, batch: Batch) -> list[dict[str, Any]]:
        batch.tokens = sum(self._answer(batch.endpoint, body)[2] for _, body in batch.lines)
        limit = self.settings.enqueued_token_limits.get(batch.model)
        return queue_errors(batch, self._batches.values(), limit)

    def _run(self, batch: Batch, upto: int) -> None:
        """Answer the lines before `upto` not answered yet (lines to skip stay unanswered)."""
        for index in range(len(batch.answers), upto):
            custom_id, body = batch.lines[index]
            record: dict[str, Any] = {"id": self._new_id("batch_req_"), "custom_id": custom_id}
            forced = batch.skip.get(index)
            if forced is EXPIRED:
                record.update(response=None, error=None)  # filled in at the end
            else:
                if forced is SERVER_ERROR:
                    status, answer = 500, dict(SERVER_ERROR)
                else:
                    status, answer, _ = self._answer(batch.endpoint, body)
                request_id = self._new_id("req_")
                response = {"status_code": status, "request_id": request_id, "body": answer}
                record.update(response=response, error=None)
                batch.failed += status >= 300
            batch.answers.append(record)

    def _finish(self, batch: Batch, status: str, at: float) -> None:
        """Write the output and error files; lines never run get their reason."""
        reason = CANCELLED if status == "cancelled" else EXPIRED
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
                made = self._files.store(
                    batch.project, f"{batch.id}_{suffix}.jsonl", "batch_output", data, at
                )
                if kind:
                    batch.output_file_id = made.id
                else:
                    batch.error_file_id = made.id
        batch.status, batch.times[status] = status, at


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
