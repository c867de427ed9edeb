"""Flex processing (``service_tier="flex"``) against the fake server, the ``--fallback``
option of the flex and batch modes, and ``--mode auto``. Backoff waits pass on a `FakeClock`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import InProcessCli, openai_client

from openai_parallel_toolkit import (
    APIKeyManager,
    BatchRunOptions,
    PoolOptions,
    run_batch_job,
    run_jsonl_job,
)
from openai_parallel_toolkit.errors import Action, classify, is_flex_unavailable
from openai_parallel_toolkit.prices import Usage, price_of
from openai_parallel_toolkit.testing import FakeClock, FakeOpenAIServer, ServerSettings
from openai_parallel_toolkit.testing.fake_batches import BatchSettings

KEYS = ["sk-flextest-aaaaaaaaaaaa0001", "sk-flextest-aaaaaaaaaaaa0002"]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(keys=KEYS, seed=3) as fake:
        yield fake


def pool(server: FakeOpenAIServer, clock: FakeClock | None = None) -> APIKeyManager:
    return APIKeyManager(
        api_keys=KEYS,
        api_base=server.base_url,
        make_default=False,
        options=PoolOptions(clock=clock or FakeClock()),
    )


MODEL = "o4-mini"  # a model OpenAI offers (and prices) on the flex tier


def write_input(path: Path, count: int) -> Path:
    with open(path, "w") as file:
        for i in range(count):
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"q {i}"}]}
            file.write(json.dumps(body) + "\n")
    return path


def results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def flex_requests(server: FakeOpenAIServer) -> list[Any]:
    return [
        entry["body"].get("service_tier")
        for entry in server.request_log()
        if entry["path"] == "/v1/chat/completions"
    ]


def test_the_fake_server_answers_flex_and_refuses_a_share_for_capacity(
    server: FakeOpenAIServer,
) -> None:
    client = openai_client(api_key=KEYS[0], base_url=server.base_url)
    messages: Any = [{"role": "user", "content": "hi"}]
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, service_tier="flex"
    )
    assert answer.service_tier == "flex"
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert plain.service_tier is None  # the standard tier is left as it was
    server.flex.unavailable_share = 1.0
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=messages, service_tier="flex")
    error = caught.value
    assert error.code == "resource_unavailable"
    assert not any(h.startswith("x-ratelimit") for h in error.response.headers)
    verdict = classify(error)
    assert verdict.action is Action.TRANSIENT and verdict.status_code == 429
    assert is_flex_unavailable(error)
    assert server.flex.refused == 1 and server.flex.answered == 1


def test_flex_mode_retries_refusals_later_without_blaming_the_key(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    server.flex.unavailable_share = 0.4
    source = write_input(tmp_path / "in.jsonl", 30)
    out = tmp_path / "out.jsonl"
    clock = FakeClock()
    manager = pool(server, clock)  # one thread: a FakeClock's waits are not for several
    summary = run_jsonl_job(source, out, manager=manager, progress=False, flex=True, threads=1)
    assert summary.ok and summary.done == 30
    assert server.flex.refused > 0 and clock.sleeps  # refused, waited (on the fake clock)
    assert set(flex_requests(server)) == {"flex"}
    # Not a rate limit of ours: no 429 counted against a key, no key removed.
    stats = manager.statistics()
    assert stats.rate_limited == 0 and all(k.state.name != "REMOVED" for k in stats.keys)
    lines = results(out)
    assert len({line["id"] for line in lines}) == 30
    answer = lines[0]["response"]
    assert answer["service_tier"] == "flex"
    usage = Usage.of(answer)
    flex_price = price_of(MODEL, "flex")
    assert usage is not None and flex_price is not None
    assert lines[0]["cost"] == pytest.approx(float(flex_price.cost(usage)))
    manager.close()


def test_flex_fallback_sends_refused_requests_on_the_standard_tier_at_once(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    server.flex.unavailable_share = 1.0
    source = write_input(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    clock = FakeClock()
    manager = pool(server, clock)
    summary = run_jsonl_job(
        source, out, manager=manager, progress=False, flex=True, fallback=True, threads=1
    )
    assert summary.ok and summary.done == 10
    assert server.flex.refused == 10
    assert flex_requests(server).count(None) == 10  # each sent again without service_tier
    assert not clock.sleeps  # at once
    standard = price_of(MODEL)
    line = results(out)[0]
    usage = Usage.of(line["response"])
    assert standard is not None and usage is not None
    assert line["cost"] == pytest.approx(float(standard.cost(usage)))
    manager.close()


def test_batch_fallback_sends_lines_the_batches_could_not_answer_online(tmp_path: Path) -> None:
    clock = FakeClock()
    settings = BatchSettings(processing_seconds=10, expire_share=1.0)
    with FakeOpenAIServer(
        keys=KEYS, clock=clock, settings=ServerSettings(batches=settings)
    ) as fake:
        source = write_input(tmp_path / "in.jsonl", 4)
        out = tmp_path / "out.jsonl"
        options = BatchRunOptions(poll_interval=5, max_retries=1, clock=clock, fallback=True)
        manager = APIKeyManager(api_keys=KEYS, api_base=fake.base_url, make_default=False)
        summary = run_batch_job(source, out, manager=manager, options=options)
        manager.close()
        assert summary.ok and summary.online == 4 and summary.answered == 4
        assert sum(fake.batches.created.values()) == 2  # first try and one resubmission
        lines = results(out)
        assert len({line["id"] for line in lines}) == len(lines) == 4
        assert all("response" in line for line in lines)


def test_command_line_flex_and_auto_modes(run_cli: InProcessCli, tmp_path: Path) -> None:
    settings = BatchSettings(validate_seconds=0.01, processing_seconds=0.05, finalize_seconds=0.01)
    with FakeOpenAIServer(keys=KEYS, settings=ServerSettings(batches=settings)) as fake:
        fake.flex.unavailable_share = 1.0
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"api_keys": KEYS, "api_base": fake.base_url}))
        source = write_input(tmp_path / "in.jsonl", 6)
        out = tmp_path / "flex.jsonl"
        common = ["--config", str(config), "--no-progress"]
        ran = run_cli(
            "run", str(source), "-o", str(out), "--mode", "flex", "--fallback", "standard", *common
        )
        assert ran.returncode == 0, ran.stderr
        assert len(results(out)) == 6 and fake.flex.refused == 6
        refused = run_cli("run", str(source), "-o", str(out), "--fallback", "standard", *common)
        assert refused.returncode == 2 and "--fallback needs --mode" in refused.stderr

        small = tmp_path / "small.jsonl"
        auto = ["--mode", "auto", "--batch-threshold", "7", "--poll-interval", "0.02", *common]
        ran = run_cli("run", str(source), "-o", str(small), *auto)
        assert ran.returncode == 0, ran.stderr
        assert len(results(small)) == 6 and not fake.batches.created  # 6 < 7: online
        write_input(source, 8)
        large = tmp_path / "large.jsonl"
        ran = run_cli("run", str(source), "-o", str(large), *auto)
        assert ran.returncode == 0, ran.stderr
        assert len(results(large)) == 8 and sum(fake.batches.created.values()) == 1
        assert "submitted" in ran.stderr and "saved" in ran.stderr
