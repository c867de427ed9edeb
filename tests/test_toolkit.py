"""ParallelToolkit in-process: hooks, resume, failure isolation, listing, naming, the cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openai_parallel_toolkit import (
    APIKeyManager,
    ChatModel,
    Gpt35Turbo,
    ParallelToolkit,
    RequestCache,
    multi_process_one,
    request_openai_api,
    reset_default_manager,
)
from openai_parallel_toolkit.testing import FakeOpenAIServer

KEYS = [f"sk-toolkit-{'t' * 30}-{i:04d}" for i in range(3)]


@pytest.fixture(autouse=True)
def _fresh_default_pool() -> Iterator[None]:
    reset_default_manager()
    yield
    reset_default_manager()


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(keys=KEYS) as fake:
        yield fake


@pytest.fixture
def config(server: FakeOpenAIServer, tmp_path: Path) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"api_keys": KEYS, "api_base": server.base_url}))
    return str(path)


class SeedToolkit(ParallelToolkit):
    """The original README's example, unchanged: static hooks, the default pool."""

    @staticmethod
    def process_input(file):  # type: ignore[no-untyped-def]
        return json.load(file)

    @staticmethod
    def process_data(data):  # type: ignore[no-untyped-def]
        model = Gpt35Turbo(content=data["text"], prompt="", temperature=0.7)
        result = request_openai_api(model)
        return result

    @staticmethod
    def process_output(data, output_file_without_ext):  # type: ignore[no-untyped-def]
        output_file = output_file_without_ext + ".json"
        with open(output_file, "w", encoding="utf-8") as file:
            json.dump({"result": data}, file, ensure_ascii=False)


class ItemsToolkit(ParallelToolkit):
    """Instance hooks: each file holds many items, sent with multi_process_one."""

    def __init__(self, *args: Any, fail_on: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_on = fail_on

    def process_input(self, file: Any) -> Any:
        return json.load(file)

    def process_data(self, data: Any) -> Any:
        if self.fail_on is not None and self.fail_on in json.dumps(data):
            raise RuntimeError(f"hook refused {self.fail_on}")
        pairs = [("Answer briefly.", item) for item in data["items"]]
        return multi_process_one(pairs, Gpt35Turbo, temperature=0.0)

    def process_output(self, data: Any, output_file_without_ext: str) -> None:
        with open(output_file_without_ext + ".json", "w", encoding="utf-8") as file:
            json.dump({"results": data}, file)


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def outputs(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and ".openai-parallel-toolkit" not in p.parts
    )


def test_seed_example_runs_unchanged_and_resumes(
    config: str, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    for i in range(5):
        write(tmp_path / "in" / f"doc{i}.json", json.dumps({"text": f"doc {i}"}))
    summary = SeedToolkit(
        config_path=config, input_path=tmp_path / "in", output_path=tmp_path / "out"
    ).run()
    assert (summary.processed, summary.skipped, summary.failed) == (5, 0, ())
    assert json.loads((tmp_path / "out" / "doc3.json").read_text()) == {"result": "echo: doc 3"}
    assert server.total().requests == 5
    again = SeedToolkit(config, str(tmp_path / "in"), str(tmp_path / "out")).run()
    assert (again.processed, again.skipped) == (0, 5)
    assert server.total().requests == 5


def test_failures_are_isolated_and_retried_next_run(
    config: str, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    for i in range(6):
        write(inputs / f"f{i}.json", json.dumps({"items": [f"f{i}-a", f"f{i}-b"]}))
    write(inputs / "hook.json", json.dumps({"items": ["BOOM"]}))
    write(inputs / "request.json", json.dumps({"items": ["ok", "[[context_length_exceeded]]"]}))
    write(inputs / "latin1.json", "{'items': ['caf\u00e9']}".encode("latin-1"))
    out = tmp_path / "out"
    summary = ItemsToolkit(config, inputs, out, fail_on="BOOM", progress=False).run()
    assert summary.processed == 6
    reasons = {failure.path: failure.reason for failure in summary.failed}
    assert set(reasons) == {"hook.json", "request.json", "latin1.json"}
    assert "hook refused BOOM" in reasons["hook.json"]
    assert "1 of 2 items failed" in reasons["request.json"]
    assert "context_length_exceeded" in reasons["request.json"]
    assert reasons["latin1.json"].startswith("not UTF-8 text")
    assert outputs(out) == [f"f{i}.json" for i in range(6)]  # failed files have no output
    assert not summary.ok
    # Next run: only the failed files are tried again; the finished ones are skipped.
    write(inputs / "latin1.json", json.dumps({"items": ["café"]}))
    second = ItemsToolkit(config, inputs, out, progress=False).run()
    assert second.skipped == 6
    assert second.processed == 2  # hook.json and latin1.json; request.json still fails
    assert [failure.path for failure in second.failed] == ["request.json"]


def test_rerun_after_a_fixed_item_sends_exactly_one_request(
    config: str, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    items = [f"item {i}" for i in range(100)]
    items[37] = "item 37 [[context_length_exceeded]]"
    source = write(tmp_path / "in" / "batch.json", json.dumps({"items": items}))
    out = tmp_path / "out"
    first = ItemsToolkit(config, source, out, progress=False).run()
    assert [f.path for f in first.failed] == ["batch.json"]
    assert outputs(out) == []  # never a half result
    assert server.total().successes == 99
    items[37] = "item 37"  # the cause is fixed
    source.write_text(json.dumps({"items": items}))
    server.reset_counters()
    second = ItemsToolkit(config, source, out, progress=False).run()
    assert second.ok and second.processed == 1
    assert server.total().requests == 1  # the 99 others came from the cache
    results = json.loads((out / "batch.json").read_text())["results"]
    assert results == [f"echo: item {i}" for i in range(100)]


def test_cache_can_be_turned_off(config: str, server: FakeOpenAIServer, tmp_path: Path) -> None:
    write(tmp_path / "in" / "a.json", json.dumps({"items": ["x", "y"]}))
    out = tmp_path / "out"
    ItemsToolkit(config, tmp_path / "in", out, cache=False, progress=False).run()
    assert not (out / ".openai-parallel-toolkit" / "cache.sqlite").exists()
    (out / "a.json").unlink()  # forces the file to be done again
    ItemsToolkit(config, tmp_path / "in", out, cache=False, progress=False).run()
    assert server.total().requests == 4


def test_recursion_mirroring_hidden_files_and_same_stems(
    config: str, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    write(inputs / "top.json", json.dumps({"text": "top"}))
    write(inputs / "a" / "b" / "deep.json", json.dumps({"text": "deep"}))
    write(inputs / "a" / "same.json", json.dumps({"text": "same json"}))
    write(inputs / "a" / "same.txt", json.dumps({"text": "same txt"}))
    write(inputs / ".hidden.json", json.dumps({"text": "hidden"}))
    write(inputs / ".git" / "config.json", json.dumps({"text": "hidden folder"}))
    out = tmp_path / "out"
    summary = SeedToolkit(config, inputs, out, progress=False).run()
    assert summary.processed == 4
    assert outputs(out) == [
        "a/b/deep.json",
        "a/same.json.json",
        "a/same.txt.json",
        "top.json",
    ]
    assert json.loads((out / "a" / "same.txt.json").read_text()) == {"result": "echo: same txt"}
    flat = tmp_path / "flat"
    summary = SeedToolkit(config, inputs, flat, recursive=False, progress=False).run()
    assert summary.processed == 1 and outputs(flat) == ["top.json"]


def test_file_count_caps_the_files_not_yet_done(config: str, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    for i in range(7):
        write(inputs / f"d{i}.json", json.dumps({"text": str(i)}))
    out = tmp_path / "out"
    first = SeedToolkit(config, inputs, out, file_count=3, progress=False).run()
    assert first.processed == 3 and outputs(out) == ["d0.json", "d1.json", "d2.json"]
    second = SeedToolkit(config, inputs, out, file_count=3, progress=False).run()
    assert (second.processed, second.skipped) == (3, 3)
    third = SeedToolkit(config, inputs, out, file_count=3, progress=False).run()
    assert (third.processed, third.skipped) == (1, 6)


def test_single_input_file_and_explicit_manager(server: FakeOpenAIServer, tmp_path: Path) -> None:
    manager = APIKeyManager(
        api_keys=[{"api_key": k, "api_base": server.base_url} for k in KEYS], make_default=False
    )
    source = write(tmp_path / "one.json", json.dumps({"text": "alone"}))
    summary = SeedToolkit(
        input_path=source, output_path=tmp_path / "out", manager=manager, progress=False
    ).run()
    assert summary.processed == 1
    assert json.loads((tmp_path / "out" / "one.json").read_text()) == {"result": "echo: alone"}
    assert manager.statistics().successes == 1  # the hook's call used the toolkit's pool


def test_a_hook_that_dies_midway_leaves_no_output(config: str, tmp_path: Path) -> None:
    class HalfWriter(SeedToolkit):
        @staticmethod
        def process_output(data: Any, output_file_without_ext: str) -> None:
            with open(output_file_without_ext + ".json", "w", encoding="utf-8") as file:
                file.write('{"result": "half')
                raise OSError("disk full")

    write(tmp_path / "in" / "x.json", json.dumps({"text": "x"}))
    out = tmp_path / "out"
    summary = HalfWriter(config, tmp_path / "in", out, progress=False).run()
    assert [f.reason for f in summary.failed] == ["OSError: disk full"]
    assert outputs(out) == []
    assert SeedToolkit(config, tmp_path / "in", out, progress=False).run().processed == 1
    assert json.loads((out / "x.json").read_text()) == {"result": "echo: x"}


def test_outputs_of_the_original_toolkit_count_as_done(config: str, tmp_path: Path) -> None:
    write(tmp_path / "in" / "old.json", json.dumps({"text": "old"}))
    write(tmp_path / "in" / "new.json", json.dumps({"text": "new"}))
    write(tmp_path / "out" / "old.json", json.dumps({"result": "from the old tool"}))
    summary = SeedToolkit(config, tmp_path / "in", tmp_path / "out", progress=False).run()
    assert (summary.processed, summary.skipped) == (1, 1)
    assert json.loads((tmp_path / "out" / "old.json").read_text())["result"] == "from the old tool"


def test_deleted_output_is_redone(config: str, server: FakeOpenAIServer, tmp_path: Path) -> None:
    write(tmp_path / "in" / "a.json", json.dumps({"text": "a"}))
    out = tmp_path / "out"
    SeedToolkit(config, tmp_path / "in", out, progress=False).run()
    (out / "a.json").unlink()
    assert SeedToolkit(config, tmp_path / "in", out, progress=False).run().processed == 1
    assert server.total().requests == 1  # redone from the cache


def test_missing_input_path_is_a_clear_error(config: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="input path does not exist"):
        SeedToolkit(config, tmp_path / "nope", tmp_path / "out").run()


def test_request_cache_round_trip(server: FakeOpenAIServer, tmp_path: Path) -> None:
    manager = APIKeyManager(
        api_keys=[{"api_key": KEYS[0], "api_base": server.base_url}], make_default=False
    )
    with RequestCache(tmp_path / "cache.sqlite") as cache:
        model = ChatModel(content="cached", model="gpt-4o-mini", temperature=0.3)
        assert request_openai_api(model, manager=manager, cache=cache) == "echo: cached"
        raw = request_openai_api(model, manager=manager, cache=cache, raw=True)
        assert raw.choices[0].message.content == "echo: cached"
        assert type(raw).__name__ == "ChatCompletion"
        assert server.total().requests == 1 and cache.hits == 1
        # Any parameter changes the key.
        other = ChatModel(content="cached", model="gpt-4o-mini", temperature=0.4)
        request_openai_api(other, manager=manager, cache=cache)
        assert server.total().requests == 2 and len(cache) == 2
        cache.clear()
        assert len(cache) == 0
        request_openai_api(model, manager=manager, cache=cache)
        assert server.total().requests == 3
