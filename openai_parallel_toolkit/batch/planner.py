"""Splitting a job's requests into batch input files within the Batch API's limits.

One file holds one endpoint and one model (the API runs a batch on one model), at most
`BatchLimits.max_requests` lines and `max_bytes` bytes, and at most the input tokens one
project's queue of that model may hold (`enqueued_tokens`, or a smaller `max_tokens`), so that
any one file can be queued alone. The planner keeps only line numbers and counts in memory,
never request bodies: the file itself is written again from the input when it is uploaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..jobs.source import Item
from ..models import RawRequest

__all__ = ["BatchLimits", "PlannedChunk", "batch_line", "custom_id_of", "input_tokens", "plan"]


@dataclass(frozen=True, kw_only=True)
class BatchLimits:
    """The limits batch files are planned within; the defaults are OpenAI's.

    `enqueued_tokens` maps a model to its enqueued-token limit per project (the input tokens of
    all its pending batches); a limit the API reports in an error is learned by the job and
    used from then on. `max_tokens` caps the input tokens of one file whatever the model.
    """

    max_requests: int = 50_000
    max_bytes: int = 200 * 1024 * 1024
    max_tokens: int | None = None
    enqueued_tokens: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_requests < 1 or self.max_bytes < 1:
            raise ValueError("max_requests and max_bytes must be >= 1")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1 or None")

    def tokens_per_file(self, model: str) -> int | None:
        """The most input tokens one file of `model` may hold (None: no limit)."""
        limits = [v for v in (self.max_tokens, self.enqueued_tokens.get(model)) if v is not None]
        return min(limits) if limits else None


@dataclass
class PlannedChunk:
    """One planned batch file: its endpoint, model, (line, custom id) entries and sizes."""

    endpoint: str
    model: str
    entries: list[tuple[int, str]] = field(default_factory=list)
    tokens: int = 0
    size: int = 0


def custom_id_of(item: Item) -> str:
    """The ``custom_id`` an item is sent with: its id as JSON, so that line numbers (``17``)
    and the user's own ids (``"17"``) never collide, and the id reads back exactly."""
    return json.dumps(item.item_id, ensure_ascii=False)


def batch_line(item: Item) -> bytes:
    """The line of a batch input file that sends `item`."""
    record: dict[str, Any] = {
        "custom_id": custom_id_of(item),
        "method": "POST",
        "url": "/v1" + RawRequest.PATHS[item.endpoint],
        "body": item.sendable_body(),
    }
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def input_tokens(item: Item) -> int:
    """The input tokens of one request, as the enqueued-token limit counts them."""
    request = RawRequest(item.endpoint, item.sendable_body())
    return max(0, request.estimate_tokens() - request.max_output_tokens())


def plan(items: Iterable[Item], limits: BatchLimits) -> Iterator[PlannedChunk]:
    """The chunks of `items`: each full chunk as soon as it is full, the rest at the end."""
    open_chunks: dict[tuple[str, str], PlannedChunk] = {}
    for item in items:
        model = str(item.body.get("model", ""))
        size = len(batch_line(item))
        tokens = input_tokens(item)
        ident = (item.endpoint, model)
        chunk = open_chunks.get(ident)
        cap = limits.tokens_per_file(model)
        if chunk is not None and (
            len(chunk.entries) >= limits.max_requests
            or chunk.size + size > limits.max_bytes
            or (cap is not None and chunk.tokens + tokens > cap)
        ):
            yield chunk
            chunk = None
        if chunk is None:
            chunk = open_chunks[ident] = PlannedChunk(item.endpoint, model)
        chunk.entries.append((item.line, custom_id_of(item)))
        chunk.tokens += tokens
        chunk.size += size
    yield from open_chunks.values()
