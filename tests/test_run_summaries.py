"""Tokens, cost, requests and 429s in run summaries: ParallelToolkit.run() and ``run --summary``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import InProcessCli, server_cost

from openai_parallel_toolkit import (
    APIKeyManager,
    ChatModel,
    ParallelToolkit,
    config_from_mapping,
    multi_process_one,
    request_openai_api,
)
from openai_parallel_toolkit.testing import FakeOpenAIServer

KEYS = ["sk-summary-aaaaaaaaaaaaaa0001", "sk-summary-aaaaaaaaaaaaaa0002"]
MODEL = "gpt-4o-mini"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(keys=KEYS, seed=11) as fake:
        yield fake


class CountingToolkit(ParallelToolkit):
    """One request per file from the hook itself, and a few more through multi_process_one."""

    def process_input(self, file: Any) -> Any:
        return json.load(file)

    def process_data(self, data: Any) -> Any:
        first = request_openai_api(ChatModel(data["text"], "Be brief.", model=MODEL))
        pairs = [("Be brief.", f"{data['text']} part {i}") for i in range(3)]
        return [first, *multi_process_one(pairs, ChatModel, model=MODEL, max_tokens=20)]

    def process_output(self, data: Any, output_file_without_ext: str) -> None:
        Path(output_file_without_ext + ".json").write_text(json.dumps(data), encoding="utf-8")


def test_toolkit_summary_holds_requests_tokens_and_cost(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(5):
        (inputs / f"f{i}.json").write_text(json.dumps({"text": f"text {i}"}), encoding="utf-8")
    config = config_from_mapping({"api_keys": KEYS, "api_base": server.base_url})
    with APIKeyManager(config=config, make_default=False) as manager:
        toolkit = CountingToolkit(
            input_path=inputs, output_path=tmp_path / "out", manager=manager, progress=False
        )
        summary = toolkit.run()
    total = server.total()
    assert summary.ok and summary.processed == 5 and total.requests == 20
    assert summary.requests == summary.answered == 20 and summary.rate_limited == 0
    usage = summary.usage
    assert usage.total.requests == 20  # the nested multi_process_one calls are counted too
    assert usage.total.prompt_tokens == total.prompt_tokens
    assert usage.total.completion_tokens == total.completion_tokens
    assert usage.total.cost == pytest.approx(float(server_cost(server)), rel=1e-9)
    assert [row.name for row in usage.by_model] == [MODEL]
    assert len(usage.by_key) == 2 and all(row.name.startswith("sk-...") for row in usage.by_key)
    text = str(summary)
    assert "requests 20" in text and "model gpt-4o-mini: 20 requests" in text
    record = json.loads(json.dumps(summary.to_dict()))
    assert record["files"]["processed"] == 5 and record["requests"] == 20
    assert record["tokens"]["input"] == total.prompt_tokens
    assert set(record["by_key"]) == {row.name for row in usage.by_key}

    # A re-run answers from the cache and finds every file done: nothing is spent.
    with APIKeyManager(config=config, make_default=False) as manager:
        again = CountingToolkit(
            input_path=inputs, output_path=tmp_path / "out", manager=manager, progress=False
        ).run()
    assert again.skipped == 5 and again.requests == 0 and again.usage.total.cost == 0


def test_run_summary_file_has_the_documented_shape(
    server: FakeOpenAIServer, tmp_path: Path, run_cli: InProcessCli
) -> None:
    config = tmp_path / "keys.json"
    config.write_text(json.dumps({"api_keys": KEYS, "api_base": server.base_url}))
    requests = tmp_path / "in.jsonl"
    body = {"model": MODEL, "max_tokens": 30}
    requests.write_text(
        "".join(
            json.dumps({**body, "messages": [{"role": "user", "content": f"q {i}"}]}) + "\n"
            for i in range(8)
        )
        + "not json\n",
        encoding="utf-8",
    )
    server.set_fault("*", "rate_limit", times=2)
    server.fault_retry_after = 0.1  # the 429s' wait, short
    summary_path = tmp_path / "summary.json"
    result = run_cli("run", str(requests), "-o", str(tmp_path / "out.jsonl"),
                     "--config", str(config), "--no-progress", "--threads", "2",
                     "--summary", str(summary_path))  # fmt: skip
    assert result.returncode == 1  # the malformed line
    record = json.loads(summary_path.read_text(encoding="utf-8"))
    assert list(record) == [
        "input", "output", "version", "lines", "requests", "successes", "failures",
        "rate_limited", "tokens", "cost", "by_model", "by_key", "elapsed_seconds",
        "requests_per_second", "max_cost", "budget_reached", "interrupted", "ok",
    ]  # fmt: skip
    total = server.total()
    assert record["version"] == 1 and record["input"] == str(requests)
    assert record["lines"] == {"done": 8, "failed": 0, "skipped": 0, "malformed": 1, "redone": 0}
    assert record["successes"] == 8 and record["rate_limited"] == 2 and record["failures"] == 0
    assert record["requests"] == 10
    assert record["tokens"] == {
        "input": total.prompt_tokens,
        "output": total.completion_tokens,
        "cached": total.cached_tokens,
    }
    assert record["cost"] == pytest.approx(float(server_cost(server)), rel=1e-9)
    assert record["by_model"][MODEL]["requests"] == 8
    assert sum(row["requests"] for row in record["by_key"].values()) == 8
    assert all(key.startswith("sk-...") for key in record["by_key"])
    assert record["requests_per_second"] > 0 and record["ok"] is False
