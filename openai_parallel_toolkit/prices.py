"""Token prices per model and tier, and what a response's usage cost.

Prices come from the config's ``prices:`` overrides (private deployments, fine-tunes), else from
the price data bundled with `genai-prices`, a maintained offline price library. It is only ever
read from its bundled snapshot: its opt-in updater (which downloads from the network) is never
started, so a run costs the same offline as online and is reproducible. A model neither knows is
"cost unknown" (None): never a guessed number.

A `Price` is USD per million tokens. Tiers: ``standard``, ``batch`` (the Batch API),
``flex`` (``service_tier="flex"``) and ``priority``. A tier the library holds no price for is
unknown for that model, rather than priced at another tier's rate.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Literal

__all__ = [
    "TIERS",
    "Price",
    "PriceTable",
    "Tier",
    "Usage",
    "price_of",
    "prices_from_mapping",
    "tier_of",
    "usd",
]

logger = logging.getLogger(__name__)

Tier = Literal["standard", "batch", "flex", "priority"]
TIERS: tuple[Tier, ...] = ("standard", "batch", "flex", "priority")
_MILLION = Decimal(1_000_000)
# genai-prices' request contexts that select each tier's price variant (None: the base prices).
_CONTEXTS: dict[Tier, dict[str, str] | None] = {
    "standard": None,
    "batch": {"processing": "batch"},
    "flex": {"service_tier": "flex"},
    "priority": {"service_tier": "priority"},
}


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one or more requests: prompt (cached ones included), completion, cached."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
        )

    @classmethod
    def of(cls, response: Any) -> Usage | None:
        """The usage a response reports (a dict or a client object), or None if it has none.

        Chat, completions and embeddings report ``prompt_tokens`` / ``completion_tokens`` /
        ``prompt_tokens_details.cached_tokens``; the Responses API ``input_tokens`` /
        ``output_tokens`` / ``input_tokens_details.cached_tokens``.
        """
        usage = _field(response, "usage")
        if usage is None:
            return None
        prompt = _count(usage, "prompt_tokens", "input_tokens")
        if prompt is None:
            return None
        completion = _count(usage, "completion_tokens", "output_tokens") or 0
        details = _field(usage, "prompt_tokens_details") or _field(usage, "input_tokens_details")
        cached = _count(details, "cached_tokens") if details is not None else None
        return cls(prompt, completion, min(cached or 0, prompt))


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)


def _count(value: Any, *names: str) -> int | None:
    for name in names:
        number = _field(value, name)
        if isinstance(number, int) and not isinstance(number, bool) and number >= 0:
            return number
    return None


def tier_of(response: Any, body: Mapping[str, Any] | None = None) -> Tier:
    """The tier a request was billed at: the response's ``service_tier`` when it names flex or
    priority (OpenAI reports what it applied), else the one the request asked for."""
    applied = _field(response, "service_tier")
    asked = body.get("service_tier") if body is not None else None
    for tier in (applied, asked):
        if tier in ("flex", "priority"):
            return "flex" if tier == "flex" else "priority"
        if tier is not None and tier != "auto":
            break  # "default": standard, whatever was asked
    return "standard"


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens: `input`, `output`, and `cached_input` (None: billed as input).

    `above` holds long-prompt prices: ``(n, price)`` applies to every token of a request whose
    prompt has more than n tokens (the providers' "cliff" tiers); the highest such n wins.
    """

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    above: tuple[tuple[int, Price], ...] = ()

    def for_prompt(self, prompt_tokens: int) -> Price:
        """The flat price that applies to a request with `prompt_tokens` prompt tokens."""
        chosen = self
        for threshold, price in sorted(self.above, key=lambda pair: pair[0]):
            if prompt_tokens > threshold:
                chosen = price
        return chosen

    def cost(self, usage: Usage) -> Decimal:
        """USD of one request's `usage` (for a total of many, add their costs)."""
        price = self.for_prompt(usage.prompt_tokens)
        cached = usage.cached_tokens
        cached_rate = price.input if price.cached_input is None else price.cached_input
        total = (
            price.input * (usage.prompt_tokens - cached)
            + cached_rate * cached
            + price.output * usage.completion_tokens
        )
        return total / _MILLION

    def worst_case(self, prompt_tokens: int, output_tokens: int) -> Decimal:
        """USD of a request at most: no cached token, the whole output allowance used."""
        return self.cost(Usage(prompt_tokens, output_tokens))


class PriceTable:
    """Prices per model: `overrides` (model -> `Price`, every tier) first, then the library.

    Lookups are cached; the library's data is imported on the first lookup it answers.
    """

    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self.overrides: Mapping[str, Price] = dict(overrides or {})

    def price_of(self, model: str, tier: Tier = "standard") -> Price | None:
        """The price of `model` at `tier`, or None when unknown."""
        override = self.overrides.get(model)
        if override is not None:
            return override
        return _library_price(model, tier)

    def cost_of(self, model: str | None, usage: Usage, tier: Tier = "standard") -> Decimal | None:
        """USD of one request of `model` with `usage`, or None when the price is unknown."""
        price = None if model is None else self.price_of(model, tier)
        return None if price is None else price.cost(usage)

    def __repr__(self) -> str:
        return f"<PriceTable overrides={sorted(self.overrides)}>"


def price_of(model: str, tier: Tier = "standard") -> Price | None:
    """The library's price of `model` (an OpenAI model name) at `tier`; None when unknown."""
    return _library_price(model, tier)


@functools.lru_cache(maxsize=256)
def _library_price(model: str, tier: Tier) -> Price | None:
    if tier not in _CONTEXTS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}, not {tier!r}")
    try:
        from genai_prices import data_snapshot, types
    except ImportError:  # Python 3.10: the library needs 3.11; only overrides are known
        logger.info("genai-prices is not installed: prices only from the config's 'prices'")
        return None
    snapshot = data_snapshot.get_snapshot()
    try:
        provider, info = snapshot.find_provider_model(model, None, "openai", None)
    except LookupError:
        return None
    now = datetime.now(timezone.utc)  # the alias UTC is 3.11+
    context = _CONTEXTS[tier]
    if context is not None and not any(
        variant.when == context and (variant.constraint is None or variant.constraint.active(now))
        for variant in info.price_variants or ()
    ):
        return None  # the library would answer with the standard price: not this tier's
    del provider  # OpenAI's: tier variants are the provider's own
    prices = info.get_prices(now, context)
    return _from_library(prices, types.TieredPrices)


def _from_library(prices: Any, tiered: type[Any]) -> Price | None:
    """Our `Price` of a genai-prices ``ModelPrice``; None without input or output rates."""
    rates = {
        "input": getattr(prices, "input_mtok", None),
        "output": getattr(prices, "output_mtok", None),
        "cached_input": getattr(prices, "cache_read_mtok", None),
    }
    if rates["input"] is None:
        return None
    if rates["output"] is None:
        rates["output"] = Decimal(0)  # embeddings: no output tokens to price
    thresholds = sorted(
        {tier.start for rate in rates.values() if isinstance(rate, tiered) for tier in rate.tiers}
    )

    def flat(rate: Any, prompt_tokens: int | None) -> Decimal | None:
        if not isinstance(rate, tiered):
            return rate  # type: ignore[no-any-return]  # a Decimal or None
        chosen = rate.base
        for tier in rate.tiers:
            if prompt_tokens is not None and prompt_tokens > tier.start:
                chosen = tier.price
        return chosen  # type: ignore[no-any-return]  # a Decimal

    def at(prompt_tokens: int | None) -> Price:
        return Price(
            input=flat(rates["input"], prompt_tokens) or Decimal(0),
            output=flat(rates["output"], prompt_tokens) or Decimal(0),
            cached_input=flat(rates["cached_input"], prompt_tokens),
        )

    base = at(None)
    above = tuple((start, at(start + 1)) for start in thresholds)
    return Price(base.input, base.output, base.cached_input, above)


_PRICE_FIELDS = ("input", "output", "cached_input")


def prices_from_mapping(value: object, source: str) -> dict[str, Price]:
    """The config's ``prices:`` mapping (model -> {input, output, cached_input}, USD per
    million tokens) as `Price` objects; a `ConfigError` names the file and the field."""
    from .errors import ConfigError

    def fail(message: str, field: str) -> ConfigError:
        return ConfigError(message, source=source, field=field)

    if not isinstance(value, Mapping):
        raise fail("must be a mapping of model names to {input, output, cached_input}", "prices")
    prices: dict[str, Price] = {}
    for model, entry in value.items():
        where = f"prices.{model}"
        if not isinstance(model, str) or not model.strip():
            raise fail("model names must be non-empty strings", "prices")
        if not isinstance(entry, Mapping):
            raise fail("must be a mapping like {input: 0.15, output: 0.6} (USD per 1M)", where)
        for name in entry:
            if name not in _PRICE_FIELDS:
                raise fail(f"unknown field {name!r} (expected input, output, cached_input)", where)
        rates = {name: _rate(entry.get(name), f"{where}.{name}", fail) for name in _PRICE_FIELDS}
        for required in ("input", "output"):
            if rates[required] is None:
                raise fail(f"missing required field {required!r}", f"{where}.{required}")
        prices[model] = Price(
            input=rates["input"] or Decimal(0),
            output=rates["output"] or Decimal(0),
            cached_input=rates["cached_input"],
        )
    return prices


def _rate(value: object, field: str, fail: Any) -> Decimal | None:
    """A price in USD per million tokens: a number >= 0 (kept exact), or None if absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(f"must be a number of USD per million tokens, not {type(value).__name__}", field)
    rate = Decimal(str(value))  # str: 0.15 stays 0.15, not its binary neighbour
    if not rate.is_finite() or rate < 0:
        raise fail(f"must be a finite number >= 0, got {value}", field)
    return rate


def usd(amount: float | Decimal) -> str:
    """Dollars with the digits that matter (a small test run's cost is not all zeros):
    ``$0.000013``, ``$1.2345``, ``$120.50``."""
    value = float(amount)
    if value >= 100:
        return f"${value:.2f}"
    return f"${value:.4f}" if value >= 1 else f"${value:.6f}"
