"""JSONL jobs: a file of request bodies in, a file of results out, resumable item by item.

Each input line is a request body (model, messages / prompt / input, any parameters) with an
optional ``metadata`` object and an optional ``custom_id``, as the OpenAI cookbook's parallel
processor reads them. Each output line is ``{"id": ..., "metadata": ..., "response": {...}}``
or ``{"id": ..., "metadata": ..., "error": {...}}``, written and flushed as the item finishes;
the id is the ``custom_id``, else the line number.

Running the same job again resumes: ids that already have a response are skipped, failed ones
are tried again (their error lines are dropped first, so every id appears once), and a torn
last line left by a crash is cut off. The input is read as a stream; memory holds the ids done
and the requests in flight, never the whole file.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

from .errors import RequestFailedError, redact
from .keys import APIKeyManager
from .models import RawRequest
from .parallel import completed, default_concurrency
from .request import RetryPolicy, request_openai_api

__all__ = ["JobSummary", "infer_endpoint", "run_jsonl_job"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobSummary:
    """What one run of a JSONL job did."""

    done: int
    skipped: int
    failed: int
    malformed: tuple[str, ...] = field(default=())
    interrupted: bool = False
    elapsed: float = 0.0
    repaired: bool = False

    @property
    def ok(self) -> bool:
        """True when every item has a response and nothing was malformed or interrupted."""
        return not self.failed and not self.malformed and not self.interrupted

    def __str__(self) -> str:
        text = (
            f"done {self.done}, skipped {self.skipped} (already done), failed {self.failed}, "
            f"malformed lines {len(self.malformed)} in {self.elapsed:.1f} s"
        )
        if self.repaired:
            text += "; repaired a torn last line"
        if self.interrupted:
            text += " (interrupted: run again to continue)"
        elif self.failed:
            text += " (run again to retry the failed items)"
        return text


def infer_endpoint(body: dict[str, Any]) -> str:
    """The endpoint a request body is for: chat, completions, embeddings or responses."""
    if "messages" in body:
        return "chat"
    if "prompt" in body:
        return "completions"
    if "input" in body and "embedding" in str(body.get("model", "")):
        return "embeddings"
    if "input" in body:
        return "responses"
    raise ValueError("cannot tell the endpoint: no messages, prompt or input")


def _id_key(item_id: Any) -> str:
    return json.dumps(item_id, sort_keys=True)


def _prepare_output(path: Path) -> tuple[set[str], bool]:
    """Ids already answered in `path`; cuts a torn last line and drops error lines.

    Returns (done ids, whether a torn line was repaired).
    """
    if not path.exists():
        return set(), False
    repaired = False
    with open(path, "rb+") as file:
        size = file.seek(0, os.SEEK_END)
        if size:
            file.seek(size - 1)
            if file.read(1) != b"\n":
                # A crash mid-write: keep everything up to the last complete line.
                file.seek(0)
                data_end = file.read().rfind(b"\n") + 1
                file.truncate(data_end)
                repaired = True
    done: set[str] = set()
    keep_all = True
    with open(path, encoding="utf-8") as file:
        for line in file:
            try:
                record = json.loads(line)
            except ValueError:
                keep_all = False
                continue
            if isinstance(record, dict) and "response" in record and "id" in record:
                done.add(_id_key(record["id"]))
            else:
                keep_all = False
    if not keep_all:
        # Failed items are tried again: drop their error lines so each id appears once.
        temporary = path.with_name(path.name + ".tmp")
        with open(path, encoding="utf-8") as source, open(temporary, "w", encoding="utf-8") as out:
            for line in source:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and "response" in record and "id" in record:
                    out.write(line)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    return done, repaired


@dataclass
class _Item:
    item_id: Any
    metadata: Any
    endpoint: str
    body: dict[str, Any]


class _Job:
    def __init__(self, output: IO[str], progress: tqdm[Any]) -> None:
        self._output = output
        self._lock = threading.Lock()
        self.bar = progress
        self.done = self.failed = self.skipped = 0
        self.malformed: list[str] = []

    def write(self, record: dict[str, Any], failed: bool) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self._output.write(line)
            self._output.flush()
            if failed:
                self.failed += 1
            else:
                self.done += 1
            self.bar.update(1)


def _items(path: Path, done: set[str], endpoint: str | None, job: _Job) -> Iterator[_Item]:
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                body = json.loads(line)
                if not isinstance(body, dict):
                    raise ValueError("not a JSON object")
                custom_id = body.pop("custom_id", None)
                metadata = body.pop("metadata", None)
                chosen = endpoint or infer_endpoint(body)
            except ValueError as exc:
                message = f"line {number}: {exc}"
                job.malformed.append(message)
                logger.warning("skipping malformed %s", message)
                job.bar.update(1)
                continue
            item_id = custom_id if custom_id is not None else number
            if _id_key(item_id) in done:
                job.skipped += 1
                job.bar.update(1)
                continue
            yield _Item(item_id, metadata, chosen, body)


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            count += block.count(b"\n")
    return count


def run_jsonl_job(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    manager: APIKeyManager,
    endpoint: str | None = None,
    threads: int | None = None,
    ordered: bool = False,
    progress: bool = True,
    policy: RetryPolicy | None = None,
) -> JobSummary:
    """Run every request of `input_path` not yet answered in `output_path`; see the module doc.

    `endpoint` forces one endpoint for every line (default: told by each body's fields).
    `ordered` also writes ``<output stem>.ordered.jsonl``, the results sorted by id.
    """
    source, target = Path(input_path), Path(output_path)
    if not source.is_file():
        raise FileNotFoundError(f"input file not found: {source}")
    if endpoint is not None and endpoint not in RawRequest.PATHS:
        raise ValueError(f"endpoint must be one of {', '.join(RawRequest.PATHS)}")
    started = time.monotonic()
    done_ids, repaired = _prepare_output(target)
    policy = policy or RetryPolicy()
    count = threads or default_concurrency(manager)
    baseline = manager.statistics()
    bar = tqdm(
        total=_count_lines(source), desc="requests", unit="req", disable=not progress,
        dynamic_ncols=True,
    )  # fmt: skip
    interrupted = False
    with open(target, "a", encoding="utf-8") as output:
        job = _Job(output, bar)

        def send(item: _Item) -> None:
            record: dict[str, Any] = {"id": item.item_id, "metadata": item.metadata}
            try:
                model = RawRequest(item.endpoint, item.body)
                record["response"] = request_openai_api(
                    model, manager=manager, policy=policy, raw=True, cache=False
                )
                job.write(record, failed=False)
            except Exception as exc:
                status = exc.status_code if isinstance(exc, RequestFailedError) else None
                record["error"] = {
                    "message": redact(str(exc)),
                    "type": type(exc).__name__,
                    "status_code": status,
                }
                job.write(record, failed=True)

        executor = ThreadPoolExecutor(count, thread_name_prefix="jsonl")
        last = 0.0
        try:
            for _ in completed(executor, send, _items(source, done_ids, endpoint, job), count * 2):
                now = time.monotonic()
                if now - last > 0.5:
                    last = now
                    _postfix(bar, manager, baseline, job, now - started)
        except KeyboardInterrupt:
            interrupted = True
            logger.warning("interrupted: finishing the requests in flight")
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            _postfix(bar, manager, baseline, job, time.monotonic() - started)
            bar.close()
    if ordered and not interrupted:
        _write_ordered(target)
    return JobSummary(
        done=job.done,
        skipped=job.skipped,
        failed=job.failed,
        malformed=tuple(job.malformed),
        interrupted=interrupted,
        elapsed=time.monotonic() - started,
        repaired=repaired,
    )


def _postfix(
    bar: tqdm[Any], manager: APIKeyManager, baseline: Any, job: _Job, elapsed: float
) -> None:
    stats = manager.statistics()
    bar.set_postfix(
        req_s=f"{(stats.requests - baseline.requests) / max(elapsed, 1e-9):.1f}",
        tokens=stats.tokens - baseline.tokens,
        r429=stats.rate_limited - baseline.rate_limited,
        failed=job.failed,
        refresh=False,
    )


def _write_ordered(path: Path) -> Path:
    """A copy of `path` sorted by id (line numbers first, then custom ids), via file offsets."""
    index: list[tuple[int, Any, int]] = []
    with open(path, "rb") as file:
        offset = 0
        for line in file:
            record = json.loads(line)
            item_id = record.get("id")
            kind = 0 if isinstance(item_id, int) else 1
            index.append((kind, item_id if kind == 0 else _id_key(item_id), offset))
            offset += len(line)
    index.sort(key=lambda entry: (entry[0], entry[1]))
    ordered = path.with_name(path.stem + ".ordered" + path.suffix)
    temporary = ordered.with_name(ordered.name + ".tmp")
    with open(path, "rb") as source, open(temporary, "wb") as out:
        for _, _, position in index:
            source.seek(position)
            out.write(source.readline())
    os.replace(temporary, ordered)
    print(f"ordered copy: {ordered}", file=sys.stderr)
    return ordered
