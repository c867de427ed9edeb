"""What a JSONL job would cost, without sending anything (``run --dry-run``).

The lines not yet answered in the results file are read as a run would read them (the file is
not changed); each prompt is counted with tiktoken and priced with its whole output allowance.
With every line's ``max_tokens`` (or ``max_completion_tokens`` / ``max_output_tokens``) set, or
embeddings, the figure is an upper bound; otherwise the default allowance makes it an estimate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from ..models import RawRequest
from ..prices import PriceTable, tier_of, usd
from ..tokens import output_is_capped
from .plan import check_paths, check_plan, plan_job
from .results import read_results

__all__ = ["CostEstimate", "estimate_job_cost"]


@dataclass(frozen=True, slots=True)
class CostEstimate:
    """The cost of a job's unanswered lines: `cost` (USD) of those whose model has a price,
    the tokens counted, the models without a price, and whether it is an `upper_bound`."""

    requests: int
    prompt_tokens: int
    output_tokens: int
    cost: float
    unpriced: tuple[str, ...]
    unpriced_requests: int
    upper_bound: bool
    skipped: int

    def __str__(self) -> str:
        kind = (
            "at most" if self.upper_bound else "about (an estimate: some lines set no max_tokens)"
        )
        text = (
            f"dry run: {self.requests} requests to send ({self.skipped} already done), "
            f"{self.prompt_tokens} prompt tokens + up to {self.output_tokens} output tokens: "
            f"{kind} {usd(self.cost)}"
        )
        if self.unpriced:
            text += (
                f"; cost unknown for {self.unpriced_requests} requests of "
                f"{', '.join(self.unpriced)} (not included: price them under 'prices:')"
            )
        return text + "; nothing was sent"


def estimate_job_cost(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    prices: PriceTable,
    endpoint: str | None = None,
    redo_changed: bool = False,
) -> CostEstimate:
    """Price the lines of `input_path` not yet answered in `output_path`; sends nothing and
    changes no file. Raises as `run_jsonl_job` does for bad paths or a foreign results file."""
    source, target = Path(input_path), Path(output_path)
    check_paths(source, target)
    existing = read_results(target)
    plan = plan_job(source, existing, endpoint)
    check_plan(plan, existing, redo_changed)
    requests = prompt_total = output_total = unpriced_requests = 0
    cost = Decimal(0)
    capped = True
    unpriced: dict[str, None] = {}
    for item in plan.items():
        request = RawRequest(item.endpoint, item.sendable_body())
        output = request.max_output_tokens()
        prompt = max(0, request.estimate_tokens() - output)
        requests += 1
        prompt_total += prompt
        output_total += output
        capped = capped and output_is_capped(request.path, request.body)
        model = request.model_name()
        price = None if model is None else prices.price_of(model, tier_of({}, request.body))
        if price is None:
            unpriced[str(model)] = None
            unpriced_requests += 1
        else:
            cost += price.worst_case(prompt, output)
    return CostEstimate(
        requests=requests,
        prompt_tokens=prompt_total,
        output_tokens=output_total,
        cost=float(cost),
        unpriced=tuple(unpriced),
        unpriced_requests=unpriced_requests,
        upper_bound=capped,
        skipped=plan.skipped,
    )
