"""Prices per model and tier, usage arithmetic, and the config's price overrides."""

from __future__ import annotations

import json
import socket
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from openai_parallel_toolkit.config import load_config
from openai_parallel_toolkit.errors import ConfigError
from openai_parallel_toolkit.prices import Price, PriceTable, Usage, price_of, tier_of

KEY = "sk-proj-" + "a" * 40


def test_known_models_have_standard_batch_and_cached_prices() -> None:
    standard = price_of("gpt-4o-mini")
    batch = price_of("gpt-4o-mini", "batch")
    assert standard is not None and batch is not None
    assert standard.input > 0 and standard.output > standard.input
    assert standard.cached_input is not None and standard.cached_input < standard.input
    assert batch.input == standard.input / 2 and batch.output == standard.output / 2


def test_flex_price_where_the_library_has_one_and_unknown_where_not() -> None:
    flex, standard = price_of("gpt-5", "flex"), price_of("gpt-5")
    assert flex is not None and standard is not None and flex.input < standard.input
    # No flex rate for this model: unknown, not the standard price in disguise.
    assert price_of("gpt-4o-mini", "flex") is None


def test_unknown_model_is_cost_unknown() -> None:
    assert price_of("my-private-model") is None
    assert PriceTable().cost_of("my-private-model", Usage(10, 10)) is None
    assert PriceTable().cost_of(None, Usage(10, 10)) is None


def test_prices_need_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the price lookup touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert price_of("gpt-4.1-mini", "batch") is not None


def test_cost_arithmetic_with_cached_tokens() -> None:
    price = Price(input=Decimal("2"), output=Decimal("8"), cached_input=Decimal("0.5"))
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=500_000, cached_tokens=400_000)
    # 600k uncached at 2, 400k cached at 0.5, 500k output at 8 (USD per million).
    assert price.cost(usage) == Decimal("1.2") + Decimal("0.2") + Decimal("4")
    no_cache_rate = Price(input=Decimal("2"), output=Decimal("8"))
    assert no_cache_rate.cost(usage) == Decimal("2") + Decimal("4")
    assert price.worst_case(1_000_000, 1_000_000) == Decimal("10")
    assert Usage(1, 2, 0) + Usage(3, 4, 1) == Usage(4, 6, 1)


def test_long_prompt_tiers_apply_to_the_whole_request() -> None:
    high = Price(input=Decimal("4"), output=Decimal("20"))
    price = Price(input=Decimal("2"), output=Decimal("10"), above=((200_000, high),))
    assert price.for_prompt(200_000) is price
    assert price.for_prompt(200_001) is high
    library = price_of("gpt-5.4")
    if library is not None and library.above:  # the library's own long-context tiers
        threshold, dearer = library.above[0]
        assert library.for_prompt(threshold + 1) == dearer
        assert dearer.input > library.input


def test_usage_of_chat_and_responses_answers() -> None:
    chat = {
        "usage": {
            "prompt_tokens": 30,
            "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 20},
        }
    }
    responses = {
        "usage": {
            "input_tokens": 12,
            "output_tokens": 5,
            "input_tokens_details": {"cached_tokens": 0},
        }
    }
    embeddings = {"usage": {"prompt_tokens": 9, "total_tokens": 9}}
    assert Usage.of(chat) == Usage(30, 7, 20)
    assert Usage.of(responses) == Usage(12, 5, 0)
    assert Usage.of(embeddings) == Usage(9, 0, 0)
    assert Usage.of({"choices": []}) is None


def test_tier_of_a_request() -> None:
    assert tier_of({"service_tier": "flex"}) == "flex"
    assert tier_of({}, {"service_tier": "flex"}) == "flex"
    assert tier_of({"service_tier": "default"}, {"service_tier": "flex"}) == "standard"
    assert tier_of({}, {}) == "standard"


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_config_prices_override_the_library(tmp_path: Path) -> None:
    prices = {
        "ft:gpt-4o-mini:acme::x1": {"input": 0.3, "output": 1.2, "cached_input": 0.15},
        "gpt-4o-mini": {"input": 1, "output": 2},
    }
    config = load_config(_write(tmp_path, {"api_keys": [KEY], "prices": prices}))
    table = PriceTable(config.prices)
    fine_tune = table.price_of("ft:gpt-4o-mini:acme::x1", "batch")
    assert fine_tune == Price(Decimal("0.3"), Decimal("1.2"), Decimal("0.15"))
    assert table.price_of("gpt-4o-mini") == Price(Decimal("1"), Decimal("2"))
    assert table.cost_of("gpt-4o-mini", Usage(1_000_000, 1_000_000)) == Decimal("3")


def test_yaml_openai_manager_form_takes_prices_too(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"auth_1:\n  api_key: {KEY}\nprices:\n  my-model:\n    input: 0.5\n    output: 1.5\n",
        encoding="utf-8",
    )
    assert load_config(path).prices == {"my-model": Price(Decimal("0.5"), Decimal("1.5"))}


@pytest.mark.parametrize(
    ("prices", "field"),
    [
        ({"m": {"input": 1}}, "prices.m.output"),
        ({"m": {"input": "1", "output": 2}}, "prices.m.input"),
        ({"m": {"input": -1, "output": 2}}, "prices.m.input"),
        ({"m": {"input": 1, "output": 2, "cache": 1}}, "prices.m"),
        ({"m": 3}, "prices.m"),
        (["m"], "prices"),
    ],
)
def test_bad_prices_name_file_and_field(tmp_path: Path, prices: object, field: str) -> None:
    path = _write(tmp_path, {"api_keys": [KEY], "prices": prices})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.field == field
    assert str(path) in str(caught.value)
