"""openai-manager compatibility: batched create calls, env and YAML keys, env knobs."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from openai_parallel_toolkit import (
    BatchError,
    ChatCompletion,
    Completion,
    ConfigError,
    Embedding,
    Knobs,
    RequestFailedError,
    append_auth_from_config,
    get_default_manager,
    reset_default_manager,
)
from openai_parallel_toolkit.testing import FakeOpenAIServer

KEYS = [f"sk-manager-{'e' * 28}-{i:04d}" for i in range(1, 4)]
KNOB_NAMES = [
    "OPENAI_GLOBAL_NUM_REQUEST_LIMIT",
    "GLOBAL_NUM_REQUEST_LIMIT",
    "OPENAI_REQUESTS_PER_MIN_LIMIT",
    "REQUESTS_PER_MIN_LIMIT",
    "TOKENS_PER_MIN_LIMIT",
    "OPENAI_TOKENS_PER_MIN_LIMIT",
    "COROTINE_PER_AUTH",
    "COROUTINE_PER_AUTH",
    "ATTEMPTS_PER_PROMPT",
    "RATELIMIT_AFTER_SUBMISSION",
    "OPENAI_LOG_LEVEL",
]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(keys=KEYS, latency=0.03, jitter=0.03, seed=5) as fake:
        yield fake


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """A clean environment (no keys, no knobs, no .env in the working folder)."""
    import os

    for name in list(os.environ):
        if name.startswith(("OPENAI_API_KEY", "OPENAI_API_PROXY", "OPENAI_BASE_URL")):
            monkeypatch.delenv(name)
    for name in KNOB_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    reset_default_manager()
    yield monkeypatch
    reset_default_manager()


@pytest.fixture
def env_keys(env: pytest.MonkeyPatch, server: FakeOpenAIServer) -> list[str]:
    for i, key in enumerate(KEYS, start=1):
        env.setenv(f"OPENAI_API_KEY_{i}", key)
    env.setenv("OPENAI_BASE_URL", server.base_url)
    return KEYS


def conversation(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def test_chat_batch_in_order_over_every_key(env_keys: list[str], server: FakeOpenAIServer) -> None:
    results = ChatCompletion.create(
        model="gpt-4o-mini",
        messages=[conversation(f"q{i}") for i in range(30)],
        temperature=0.2,
        no_tqdm=True,
    )
    assert [r["choices"][0]["message"]["content"] for r in results] == [
        f"echo: q{i}" for i in range(30)
    ]
    assert isinstance(results[0], dict) and results[0]["object"] == "chat.completion"
    assert set(server.counters()) == set(KEYS)  # spread over all keys
    assert all(entry["body"]["temperature"] == 0.2 for entry in server.request_log())
    single = ChatCompletion.create(model="gpt-4o-mini", messages=conversation("alone"))
    assert len(single) == 1 and single[0]["choices"][0]["message"]["content"] == "echo: alone"


def test_completion_and_embedding_batches(env_keys: list[str], server: FakeOpenAIServer) -> None:
    prompts = [f"once upon a time {i}" for i in range(12)]
    results = Completion.create(model="gpt-3.5-turbo-instruct", prompt=prompts, max_tokens=5)
    assert [r["choices"][0]["text"] for r in results] == [f"echo: {p}" for p in prompts]
    assert server.total().requests == 12  # one request per prompt

    server.reset_counters()
    texts = [f"text number {i}" for i in range(40)]
    vectors = Embedding.create(model="text-embedding-3-small", input=texts, no_tqdm=True)
    assert len(vectors) == 40
    assert server.total().requests == 3  # several inputs per request
    alone = Embedding.create(model="text-embedding-3-small", input=texts[17])
    assert vectors[17]["data"][0]["embedding"] == alone[0]["data"][0]["embedding"]
    assert vectors[17]["object"] == "list" and vectors[17]["usage"]["prompt_tokens"] >= 1
    objects = Embedding.create(
        model="text-embedding-3-small", input=texts[:2], return_openai_response=True
    )
    assert objects[1].data[0].embedding == vectors[1]["data"][0]["embedding"]


def test_unknown_parameters_pass_through(env_keys: list[str], server: FakeOpenAIServer) -> None:
    ChatCompletion.create(
        model="gpt-4o-mini",
        messages=[conversation("x")],
        seed=7,
        extra_body={"vendor_option": True},
        return_openai_response=True,
        no_tqdm=True,
    )
    body = server.request_log()[-1]["body"]
    assert body["seed"] == 7 and body["vendor_option"] is True
    assert "no_tqdm" not in body and "return_openai_response" not in body


def test_bad_key_among_good_ones(env_keys: list[str], server: FakeOpenAIServer) -> None:
    server.set_fault(KEYS[0], "invalid_api_key")
    results = ChatCompletion.create(
        model="m", messages=[conversation(f"q{i}") for i in range(15)], no_tqdm=True
    )
    assert len(results) == 15 and all(r is not None for r in results)
    assert server.counters()[KEYS[0]].requests == 1


def test_a_prompt_that_fails_for_good_never_hangs(
    env_keys: list[str], server: FakeOpenAIServer
) -> None:
    batch = [conversation("fine"), conversation("[[context_length_exceeded]]"), conversation("ok")]
    with pytest.raises(BatchError) as info:
        ChatCompletion.create(model="m", messages=batch, no_tqdm=True)
    # The 400 is final: each prompt was sent once, the failing one never again.
    assert server.total().requests == 3
    assert list(info.value.errors) == [1]
    assert info.value.results[2]["choices"][0]["message"]["content"] == "echo: ok"
    returned = ChatCompletion.create(model="m", messages=batch, opt_on_error="return")
    assert isinstance(returned[1], RequestFailedError) and returned[0] is not None


def test_yaml_auth_blocks_are_added_to_the_default_pool(
    env: pytest.MonkeyPatch, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    env.setenv("OPENAI_API_KEY", KEYS[0])
    env.setenv("OPENAI_BASE_URL", server.base_url)
    config = tmp_path / "keys.yaml"
    config.write_text(
        "".join(
            f"auth_{i}:\n  api_key: {key}\n  requests_per_min: 600\n  tokens_per_min: 150000\n"
            for i, key in enumerate(KEYS[1:], start=1)
        )
    )
    pool = append_auth_from_config(config_path=str(config))
    assert pool is get_default_manager() and pool.key_count == 3
    assert append_auth_from_config(config_path=str(config)).key_count == 3  # no duplicates
    limits = {s.key: s.requests_per_min for s in pool.statistics().keys}
    assert sorted(limits.values(), key=str) == [600.0, 600.0, None]
    # The YAML keys have no base URL of their own: the environment's default applies to them.
    ChatCompletion.create(model="m", messages=[conversation(str(i)) for i in range(9)])
    assert set(server.counters()) == set(KEYS)


def test_keys_from_a_dotenv_file(env: pytest.MonkeyPatch, server: FakeOpenAIServer) -> None:
    Path(".env").write_text(
        f"OPENAI_API_KEY_1={KEYS[0]}\nOPENAI_API_KEY_2={KEYS[1]}\nOPENAI_BASE_URL={server.base_url}\n"
    )
    results = Completion.create(model="m", prompt=["a", "b", "c", "d"], no_tqdm=True)
    assert len(results) == 4
    assert set(server.counters()) == set(KEYS[:2])


def test_each_env_key_uses_its_own_proxy(env: pytest.MonkeyPatch) -> None:
    # Fake servers stand in for the proxies (see test_pool); the upstream host does not exist.
    with FakeOpenAIServer() as proxy_a, FakeOpenAIServer() as proxy_b:
        env.setenv("OPENAI_API_KEY_1", KEYS[0])
        env.setenv("OPENAI_API_KEY_2", KEYS[1])
        env.setenv("OPENAI_API_PROXY_1", proxy_a.base_url.removesuffix("/v1"))
        env.setenv("OPENAI_API_PROXY", proxy_b.base_url.removesuffix("/v1"))  # the default
        env.setenv("OPENAI_BASE_URL", "http://api.example.invalid/v1")
        results = ChatCompletion.create(
            model="m", messages=[conversation(str(i)) for i in range(6)], no_tqdm=True
        )
        assert len(results) == 6
        assert set(proxy_a.counters()) == {KEYS[0]}
        assert set(proxy_b.counters()) == {KEYS[1]}


def test_knobs_change_behaviour(
    env_keys: list[str], env: pytest.MonkeyPatch, server: FakeOpenAIServer
) -> None:
    # One attempt per prompt: a single 500 is final.
    env.setenv("ATTEMPTS_PER_PROMPT", "1")
    server.set_fault("*", "server_error", times=1)
    with pytest.raises(BatchError):
        ChatCompletion.create(model="m", messages=[conversation("x")], no_tqdm=True)
    reset_default_manager()
    env.setenv("ATTEMPTS_PER_PROMPT", "3")
    server.set_fault("*", "server_error", times=1)
    assert ChatCompletion.create(model="m", messages=[conversation("x")], no_tqdm=True)

    # One request in flight at a time (README's name for the global limit). Each reply is
    # held 0.1 s, so requests sent at the same time would be on the server at the same time.
    reset_default_manager()
    env.setenv("GLOBAL_NUM_REQUEST_LIMIT", "1")
    with FakeOpenAIServer(keys=KEYS, latency=0.1) as slow:
        env.setenv("OPENAI_BASE_URL", slow.base_url)
        ChatCompletion.create(model="m", messages=[conversation(str(i)) for i in range(5)])
        assert slow.total().successes == 5 and slow.peak_in_flight() == 1

        # Per-key concurrency (code's name), three keys: three at a time in all (the keys are
        # taken in rotation, so one key may hold two of them for a moment).
        reset_default_manager()
        slow.reset_counters()
        env.delenv("GLOBAL_NUM_REQUEST_LIMIT")
        env.setenv("COROTINE_PER_AUTH", "1")
        ChatCompletion.create(model="m", messages=[conversation(str(i)) for i in range(6)])
        assert slow.total().successes == 6
        assert slow.peak_in_flight() <= 3  # not all six at once

    # Default limits per key; a config file's own limits win.
    reset_default_manager()
    env.setenv("OPENAI_REQUESTS_PER_MIN_LIMIT", "120")
    env.setenv("TOKENS_PER_MIN_LIMIT", "90000")
    pool = get_default_manager()
    assert {(s.requests_per_min, s.tokens_per_min) for s in pool.statistics().keys} == {
        (120.0, 90000.0)
    }
    config = Path("keys.yaml")
    config.write_text("auth_1:\n  api_key: sk-manager-other-000000000009\n  requests_per_min: 30\n")
    append_auth_from_config(config)
    assert sorted(s.requests_per_min for s in pool.statistics().keys) == [30.0, 120.0, 120.0, 120.0]


def test_knob_values_are_checked_and_log_level_applies(
    env: pytest.MonkeyPatch,
    env_keys: list[str],
    server: FakeOpenAIServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ConfigError, match="ATTEMPTS_PER_PROMPT"):
        Knobs.from_env({"ATTEMPTS_PER_PROMPT": "many"})
    with pytest.raises(ConfigError, match="RATELIMIT_AFTER_SUBMISSION"):
        Knobs.from_env({"RATELIMIT_AFTER_SUBMISSION": "maybe"})
    assert (
        Knobs.from_env({"RATELIMIT_AFTER_SUBMISSION": "False"}).ratelimit_after_submission is False
    )
    assert Knobs.from_env({}) == Knobs()
    caplog.set_level(logging.DEBUG)
    server.fault_retry_after = 0.1  # the 429's wait, short
    server.set_fault(KEYS[0], "rate_limit", times=1)
    ChatCompletion.create(model="m", messages=[conversation(str(i)) for i in range(3)])
    assert "rate limited on" in caplog.text  # logged at INFO by default
    caplog.clear()
    reset_default_manager()
    env.setenv("OPENAI_LOG_LEVEL", "40")  # errors only
    server.set_fault(KEYS[0], "rate_limit", times=1)
    ChatCompletion.create(model="m", messages=[conversation(str(i)) for i in range(3)])
    assert server.counters()[KEYS[0]].errors == 2  # the 429 did happen...
    assert "rate limited on" not in caplog.text  # ...but was not logged
    assert logging.getLogger("openai_parallel_toolkit").level == logging.NOTSET  # restored


def test_works_inside_a_running_event_loop(env_keys: list[str]) -> None:
    async def notebook_cell() -> list[str]:
        results = ChatCompletion.create(
            model="m", messages=[conversation(f"c{i}") for i in range(8)], no_tqdm=True
        )
        return [r["choices"][0]["message"]["content"] for r in results]

    assert asyncio.run(notebook_cell()) == [f"echo: c{i}" for i in range(8)]


def test_import_has_no_side_effects() -> None:
    code = (
        "import logging, os, sys\n"
        "root = list(logging.getLogger().handlers)\n"
        "import openai_parallel_toolkit as t\n"
        # Light: the HTTP client and the price data load when first needed.
        "assert not {'openai', 'genai_prices'} & set(sys.modules)\n"
        "assert logging.getLogger().handlers == root\n"
        "assert logging.getLogger('openai_parallel_toolkit').handlers == []\n"
        "assert logging.getLogger('openai_parallel_toolkit').level == logging.NOTSET\n"
        "assert t.reset_default_manager() is None\n"
        "os.environ['OPENAI_API_KEY'] = 'sk-set-after-import-00000001'\n"
        "pool = t.get_default_manager()\n"  # no snapshot: a key set after import is seen
        "print(pool.statistics().keys[0].key)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("sk-...0001#")  # the masked key and its label


def test_no_keys_anywhere_is_a_clear_error(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        ChatCompletion.create(model="m", messages=[conversation("x")])
    assert json.dumps(Knobs().global_request_limit) == "500"
