"""Turning a finished batch's output and error files into the JSONL job's result lines.

Records are matched to requests by ``custom_id`` (the output is in no particular order). A 2xx
answer becomes ``"response"`` (its body, as the online mode writes it, with its cost at the
batch price); any other answer, a line the batch never ran (``batch_expired``,
``batch_cancelled``) and every line of a batch that failed as a whole become ``"error"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..jobs.results import result_line
from ..jobs.source import Item
from ..prices import PriceTable, Usage

__all__ = ["Outcome", "batch_error", "parse_records", "result_lines"]


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


@dataclass(frozen=True, slots=True)
class Outcome:
    """One collected line: its result line, the answer's usage (None: an error, or no usage)
    and cost at the batch price and at the standard price (None: not known)."""

    item: Item
    line: str
    usage: Usage | None
    cost: float | None
    standard: float | None


def result_lines(
    records: Iterable[Mapping[str, Any]],
    items: Mapping[str, Item],
    skip: Mapping[Any, Any],
    prices: PriceTable,
) -> Iterator[Outcome]:
    """The `Outcome` of each record of an item not in `skip` (ids already written)."""
    for record in records:
        item = items.get(str(record.get("custom_id")))
        if item is None or item.item_id in skip:
            continue
        outcome, value, usage, (cost, standard) = _outcome(record, item, prices)
        line = result_line(item.item_id, item.request_hash, item.metadata, outcome, value, cost)
        yield Outcome(item, line, usage, cost, standard)


def _outcome(
    record: Mapping[str, Any], item: Item, prices: PriceTable
) -> tuple[str, Any, Usage | None, tuple[float | None, float | None]]:
    response = record.get("response")
    if isinstance(response, Mapping):
        status = response.get("status_code")
        body = response.get("body")
        if isinstance(status, int) and status < 300:
            usage = Usage.of(body)
            model = item.body.get("model")
            cost = standard = None
            if usage is not None and isinstance(model, str):
                price = prices.cost_of(model, usage, "batch")
                cost = None if price is None else float(price)
                full = prices.cost_of(model, usage, "standard")
                standard = None if full is None else float(full)
            return "response", body, usage, (cost, standard)
        error = body.get("error") if isinstance(body, Mapping) else None
        error = error if isinstance(error, Mapping) else {}
        value = {
            "message": str(error.get("message", f"HTTP {status}")),
            "type": "RequestFailedError",
            "status_code": status,
            "code": error.get("code"),
        }
        return "error", value, None, (None, None)
    error = record.get("error")
    error = error if isinstance(error, Mapping) else {}
    value = {
        "message": str(error.get("message", "no answer in the batch")),
        "type": "BatchRequestError",
        "status_code": None,
        "code": error.get("code"),
    }
    return "error", value, None, (None, None)
