"""ParallelToolkit in-process: hooks, resume, failure isolation, listing, naming, the cache."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
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
)
from openai_parallel_toolkit.testing import FakeOpenAIServer

KEYS = [f"sk-toolkit-{'t' * 30}-{i:04d}" for i in range(3)]


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


def test_an_unrelated_file_in_a_fresh_output_folder_is_not_taken_for_an_output(
    config: str, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    write(tmp_path / "in" / "report.txt", json.dumps({"text": "report"}))
    stray = write(tmp_path / "out" / "report.csv", "a,b\n1,2\n")
    written = stray.stat().st_mtime_ns
    summary = SeedToolkit(config, tmp_path / "in", tmp_path / "out", progress=False).run()
    assert (summary.processed, summary.skipped) == (1, 0)
    assert summary.adopted == 0 and "adopted" not in str(summary)
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == {"result": "echo: report"}
    assert stray.read_text() == "a,b\n1,2\n" and stray.stat().st_mtime_ns == written
    assert outputs(tmp_path / "out") == ["report.csv", "report.json"]
    assert server.total().requests == 1


def test_outputs_of_the_original_toolkit_are_adopted_when_asked(
    config: str, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    for name in ("old.json", "new.json", "sub/deep.txt"):
        write(inputs / name, json.dumps({"text": name}))
    write(out / "old.json", json.dumps({"result": "from the old tool"}))
    write(out / "sub" / "deep.csv", "from the old tool")
    summary = SeedToolkit(config, inputs, out, progress=False, adopt_existing_outputs=True).run()
    assert (summary.processed, summary.skipped, summary.adopted) == (1, 2, 2)
    assert "skipped 2 (already done, 2 of them adopted from existing outputs)" in str(summary)
    assert server.total().requests == 1  # new.json only
    assert json.loads((out / "old.json").read_text())["result"] == "from the old tool"
    assert (out / "sub" / "deep.csv").read_text() == "from the old tool"
    # Adopted inputs are recorded: they stay done on later runs, with or without the option.
    again = SeedToolkit(config, inputs, out, progress=False).run()
    assert (again.processed, again.skipped, again.adopted) == (0, 3, 0)
    # Adoption is for a folder's first run: later, a file that looks like an output is not one.
    write(inputs / "late.txt", json.dumps({"text": "late"}))
    write(out / "late.csv", "not an output of ours")
    late = SeedToolkit(config, inputs, out, progress=False, adopt_existing_outputs=True).run()
    assert (late.processed, late.skipped, late.adopted) == (1, 3, 0)
    assert (out / "late.csv").read_text() == "not an output of ours"
    assert json.loads((out / "late.json").read_text()) == {"result": "echo: late"}


def test_adoption_continues_after_a_first_run_that_stopped_early(
    config: str, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    for name in ("a.json", "b.json", "c.json"):
        write(inputs / name, json.dumps({"text": name}))
    for name in ("b.json", "c.json"):
        write(out / name, json.dumps({"result": "from the old tool"}))
    first = SeedToolkit(
        config, inputs, out, file_count=1, progress=False, adopt_existing_outputs=True
    ).run()
    assert (first.processed, first.adopted) == (1, 0)  # stopped before looking at b and c
    second = SeedToolkit(config, inputs, out, progress=False, adopt_existing_outputs=True).run()
    assert (second.processed, second.skipped, second.adopted) == (0, 3, 2)
    assert server.total().requests == 1
    for name in ("b.json", "c.json"):
        assert json.loads((out / name).read_text())["result"] == "from the old tool"


def test_progress_bar_counts_each_input_once_and_logs_print_above_it(
    config: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # tqdm's own setting: draw on every update
    inputs = tmp_path / "in"
    for i in range(30):
        items = ["BOOM"] if i % 3 == 0 else [f"{i}-a", f"{i}-b"]
        write(inputs / f"f{i:02d}.json", json.dumps({"items": items}))
    console = logging.StreamHandler(sys.stderr)  # as a script's logging.basicConfig() would
    package_logger = logging.getLogger("openai_parallel_toolkit")
    package_logger.addHandler(console)
    last_resort = logging.lastResort
    try:
        summary = ItemsToolkit(
            config, inputs, tmp_path / "out", num_threads=8, fail_on="BOOM", name="Files"
        ).run()
    finally:
        package_logger.removeHandler(console)
    assert (summary.processed, len(summary.failed)) == (20, 10)
    # Logging is as it was.
    assert console.stream is sys.stderr and logging.lastResort is last_resort
    err = capsys.readouterr().err
    segments = re.split(r"[\r\n]", err)
    frames = [re.search(r"^Files: +(\d+)%\|.*\| (\d+)/(\d+) \[", s) for s in segments]
    drawn = [frame for frame in frames if frame is not None]
    assert len(drawn) >= 2
    assert all(int(f[2]) <= int(f[3]) == 30 for f in drawn)
    assert all(int(f[1]) == round(int(f[2]) * 100 / 30) for f in drawn)  # percentage shown
    assert drawn[-1][2] == "30"
    bar_lines = [s for s in segments if s.startswith("Files:") and "Files: processed" not in s]
    assert len(bar_lines) == len(drawn)  # every drawing of the bar shows its percentage
    # Each warning is a line of its own, never appended to the bar's line.
    warnings = [s for s in segments if "failed: " in s and not s.startswith("  failed: ")]
    assert len(warnings) == 10
    assert all(s.startswith("failed: ") for s in warnings), warnings


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


def test_hook_raising_base_exception_is_reported(config: str, tmp_path: Path) -> None:
    class Exits(SeedToolkit):
        @staticmethod
        def process_data(data: Any) -> Any:
            if data["text"] == "exit":
                raise SystemExit(3)
            return data["text"]

    write(tmp_path / "in" / "a.json", json.dumps({"text": "fine"}))
    write(tmp_path / "in" / "b.json", json.dumps({"text": "exit"}))
    summary = Exits(config, tmp_path / "in", tmp_path / "out", progress=False).run()
    assert summary.processed == 1
    assert [(f.path, f.reason) for f in summary.failed] == [("b.json", "SystemExit: 3")]


def test_hook_that_writes_nothing_is_a_failure(config: str, tmp_path: Path) -> None:
    class Silent(SeedToolkit):
        @staticmethod
        def process_output(data: Any, output_file_without_ext: str) -> None:
            pass

    write(tmp_path / "in" / "a.json", json.dumps({"text": "a"}))
    summary = Silent(config, tmp_path / "in", tmp_path / "out", progress=False).run()
    assert "process_output wrote nothing" in summary.failed[0].reason


def test_death_between_two_published_files_is_not_done(
    config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class TwoFiles(SeedToolkit):
        @staticmethod
        def process_output(data: Any, output_file_without_ext: str) -> None:
            for ext in (".csv", ".json"):
                with open(output_file_without_ext + ext, "w", encoding="utf-8") as file:
                    file.write(data)

    write(tmp_path / "in" / "a.json", json.dumps({"text": "a"}))
    out = tmp_path / "out"
    real_replace = os.replace
    moved: list[str] = []

    def dies_after_first(src: Any, dst: Any) -> None:
        if moved:
            raise SystemExit("killed")  # the process dies between the two moves
        moved.append(str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dies_after_first)
    first = TwoFiles(config, tmp_path / "in", out, progress=False).run()
    monkeypatch.setattr(os, "replace", real_replace)
    assert first.processed == 0 and outputs(out) == ["a.csv"]  # half the set is in place
    second = TwoFiles(config, tmp_path / "in", out, progress=False).run()
    assert (second.processed, second.skipped) == (1, 0)  # ...and was not taken for done
    assert outputs(out) == ["a.csv", "a.json"]


def test_tricky_names_never_collide_or_skip(config: str, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    for name in ("a.json", "a.txt", "a.json.txt", "sub.txt"):
        write(inputs / name, json.dumps({"text": name}))
    write(inputs / "sub" / "x.json", json.dumps({"text": "x"}))
    (inputs / "loop").symlink_to(inputs, target_is_directory=True)  # must not recurse forever
    out = tmp_path / "out"
    summary = SeedToolkit(config, inputs, out, progress=False).run()
    assert summary.ok and summary.processed == 5
    results = {
        path: json.loads((out / path).read_text())["result"]
        for path in outputs(out)
        if not path.startswith("loop/")
    }
    assert results == {
        "a.json.json": "echo: a.json",
        "a.json.txt.json": "echo: a.json.txt",
        "a.txt.json": "echo: a.txt",
        "sub.json": "echo: sub.txt",
        "sub/x.json": "echo: x",
    }
    again = SeedToolkit(config, inputs, out, progress=False).run()
    assert again.processed == 0 and again.skipped == summary.processed


def test_output_folder_must_differ_from_input(config: str, tmp_path: Path) -> None:
    write(tmp_path / "in" / "a.json", json.dumps({"text": "a"}))
    with pytest.raises(ValueError, match="must differ"):
        SeedToolkit(config, tmp_path / "in", tmp_path / "in").run()


def test_unserialisable_parameter_still_works_with_the_cache(
    config: str, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    import openai

    class WithTimeout(SeedToolkit):
        @staticmethod
        def process_data(data: Any) -> Any:
            model = ChatModel(content=data["text"], timeout=openai.Timeout(30.0))
            return request_openai_api(model)

    write(tmp_path / "in" / "a.json", json.dumps({"text": "a"}))
    summary = WithTimeout(config, tmp_path / "in", tmp_path / "out", progress=False).run()
    assert summary.ok and summary.processed == 1


def test_nested_multi_process_one_shares_one_bounded_pool(
    config: str, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    peak = 0

    class Counting(ItemsToolkit):
        def process_data(self, data: Any) -> Any:
            nonlocal peak
            peak = max(peak, threading.active_count())
            return super().process_data(data)

    # 10 items a file: 160 in all keep the shared pool at its bound, and 16 pools of their own
    # would start 10 threads each at once (160), far past the bound asserted below.
    for i in range(16):
        write(
            tmp_path / "in" / f"f{i}.json", json.dumps({"items": [f"{i}-{j}" for j in range(10)]})
        )
    toolkit = Counting(config, tmp_path / "in", tmp_path / "out", num_threads=16, progress=False)
    before = threading.active_count()
    summary = toolkit.run()
    assert summary.ok and summary.processed == 16
    # 16 file threads + one shared pool for the items (24: 8 per key of unknown limits), not
    # 16 pools of their own (16 x 24 threads).
    assert peak <= before + 16 + 24 + 4  # + helpers such as tqdm's monitor thread


def test_cache_rebuilds_lenient_responses_and_skips_odd_requests(tmp_path: Path) -> None:
    from openai.types.chat import ChatCompletion

    odd = ChatCompletion.construct(
        id="x",
        object="chat.completion",
        created=0,
        model="local-model",
        choices=[
            {"index": 0, "finish_reason": "eos", "message": {"role": "assistant", "content": "hi"}}
        ],
    )
    with RequestCache(tmp_path / "c.sqlite") as cache:
        assert cache.put("k", odd)
        again = cache.get("k")
        assert isinstance(again, ChatCompletion)
        assert again.choices[0].finish_reason == "eos" and again.choices[0].message.content == "hi"
        assert RequestCache.key_for({"model": "m", "timeout": object()}) is not None  # ignored
        assert RequestCache.key_for({"model": "m", "metadata": object()}) is None  # not JSON
