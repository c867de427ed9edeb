"""Turning a finished batch's output and error files into the JSONL job's result lines.

Records are matched to requests by ``custom_id`` (the output is in no particular order). A 2xx
answer becomes ``"response"`` (its body, as the online mode writes it, with its cost at the
batch price); any other answer, a line the batch never ran (``batch_expired``,
``batch_cancelled``) and every line of a batch that failed as a whole become ``"error"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..jobs.results import result_line
from ..jobs.source import Item, read_item, read_lines
from ..prices import PriceTable, Usage
from .planner import custom_id_of

__all__ = ["batch_error", "chunk_items", "parse_records", "result_lines"]


def chunk_items(path: Path, lines: Iterable[int], endpoint: str | None) -> dict[str, Item]:
    """The items on `lines` of the input, by the custom id they were sent with."""
    wanted = set(lines)
    found: dict[str, Item] = {}
    for number, _, raw in read_lines(path):
        if number in wanted:
            item = read_item(number, raw, endpoint)
            if isinstance(item, Item):
                found[custom_id_of(item)] = item
    return found


def parse_records(text: str) -> Iterator[dict[str, Any]]:
    """The records of an output or error file (blank lines skipped)."""
    for raw in text.splitlines():
        if raw.strip():
            record = json.loads(raw)
            if isinstance(record, dict):
                yield record


def batch_error(errors: Any) -> dict[str, Any]:
    """The error value of lines whose whole batch failed, from the batch's ``errors``."""
    data = errors.get("data") if isinstance(errors, Mapping) else None
    messages = [str(e.get("message")) for e in data or [] if isinstance(e, Mapping)]
    codes = [e.get("code") for e in data or [] if isinstance(e, Mapping)]
    return {
        "message": "; ".join(messages) or "the batch failed",
        "type": "BatchFailed",
        "status_code": None,
        "code": codes[0] if codes else None,
    }


def result_lines(
    records: Iterable[Mapping[str, Any]],
    items: Mapping[str, Item],
    skip: Mapping[Any, Any],
    prices: PriceTable,
) -> Iterator[tuple[Item, str]]:
    """(item, result line) for each record of an item not in `skip` (ids already written)."""
    for record in records:
        item = items.get(str(record.get("custom_id")))
        if item is None or item.item_id in skip:
            continue
        outcome, value, cost = _outcome(record, item, prices)
        yield (
            item,
            result_line(item.item_id, item.request_hash, item.metadata, outcome, value, cost),
        )


def _outcome(
    record: Mapping[str, Any], item: Item, prices: PriceTable
) -> tuple[str, Any, float | None]:
    response = record.get("response")
    if isinstance(response, Mapping):
        status = response.get("status_code")
        body = response.get("body")
        if isinstance(status, int) and status < 300:
            usage = Usage.of(body)
            model = item.body.get("model")
            cost = None
            if usage is not None and isinstance(model, str):
                price = prices.cost_of(model, usage, "batch")
                cost = None if price is None else float(price)
            return "response", body, cost
        error = body.get("error") if isinstance(body, Mapping) else None
        error = error if isinstance(error, Mapping) else {}
        value = {
            "message": str(error.get("message", f"HTTP {status}")),
            "type": "RequestFailedError",
            "status_code": status,
            "code": error.get("code"),
        }
        return "error", value, None
    error = record.get("error")
    error = error if isinstance(error, Mapping) else {}
    value = {
        "message": str(error.get("message", "no answer in the batch")),
        "type": "BatchRequestError",
        "status_code": None,
        "code": error.get("code"),
    }
    return "error", value, None
