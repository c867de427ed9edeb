"""What a batch job's answers used and cost, per model and per key, kept in its journal.

Each collected chunk leaves one journal entry, ``usage/<chunk>``: the masked key that submitted
it and, per model, its answered requests, tokens in / out / cached and cost at the batch price
(null once any of them had no known price). `job_usage` adds the entries of a journal up into
the `UsageReport` the online runs give. Like the cost totals, these are figures for summaries:
a collect cut short by a crash counts, when run again, only the lines it writes then.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from ..costs import UsageLedger
from ..prices import Usage
from ..stats import UsageReport

if TYPE_CHECKING:
    from .collect import Outcome
    from .journal import BatchJournal

__all__ = ["ChunkUsage", "job_usage"]


@dataclass(slots=True)
class _ModelTally:
    requests: int = 0
    usage: Usage = field(default_factory=Usage)
    cost: Decimal | None = Decimal(0)


@dataclass(slots=True)
class ChunkUsage:
    """The usage of one chunk's answers, submitted on the key shown as `key` (masked)."""

    key: str
    models: dict[str, _ModelTally] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        """Count one collected line (errors and answers without usage count nothing)."""
        if outcome.usage is None:
            return
        model = outcome.item.body.get("model")
        tally = self.models.setdefault(model if isinstance(model, str) else "", _ModelTally())
        tally.requests += 1
        tally.usage = tally.usage + outcome.usage
        if tally.cost is None or outcome.cost is None:
            tally.cost = None  # one answer of unknown price makes the sum unknown
        else:
            tally.cost += Decimal(repr(outcome.cost))

    def to_json(self) -> str:
        """The journal entry."""
        return json.dumps(
            {
                "key": self.key,
                "models": {
                    name: [t.requests, *_tokens(t.usage), None if t.cost is None else str(t.cost)]
                    for name, t in self.models.items()
                },
            }
        )


def _tokens(usage: Usage) -> list[int]:
    return [usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens]


def job_usage(journal: BatchJournal) -> UsageReport:
    """Tokens and cost of every collected answer of the job kept in `journal`."""
    ledger = UsageLedger()
    for row in journal.chunks("collected"):
        entry = journal.get(f"usage/{row.chunk}")
        if entry is None:  # collected by a version that kept no usage
            continue
        data = json.loads(entry)
        for model, (requests, prompt, completion, cached, cost) in data["models"].items():
            ledger.record(
                data["key"],
                model or None,
                Usage(prompt, completion, cached),
                None if cost is None else Decimal(cost),
                requests=requests,
            )
    return ledger.report()
