"""The README's entry points run end to end: the quick-start job and the command line.

Every example runs at least once as a user runs it, ``python examples/NAME.py`` in a process of
its own; further runs of an example (other arguments, the resumed run) and the commands go
through the same entry points in this process (the `run_cli` fixture).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import forked
import openai
from conftest import CliResult, InProcessCli

ROOT = Path(__file__).resolve().parent.parent


def _env_without_keys() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}


def test_quickstart_runs_on_the_fake_server_without_keys() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        env=_env_without_keys(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "using the bundled fake server" in result.stdout
    assert "40 requests done: 40 succeeded, 0 rate-limited, 0 errors" in result.stdout
    assert "'Sentence number 3 of the quick-start batch.' -> 'echo: Sentence number 3" in (
        result.stdout
    )
    assert "sk-fake-quickstart" not in result.stdout + result.stderr  # keys shown masked


def test_fake_server_command_line() -> None:
    process = forked.Popen(  # a process of its own, forked: see `forked`
        [sys.executable, "-m", "openai_parallel_toolkit", "fake-server", "--port", "0"],
        env=_env_without_keys(),
        stdout=forked.PIPE,
        stderr=forked.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        assert match, line
        client = openai.OpenAI(api_key="sk-any-key-1234", base_url=match.group(1), max_retries=0)
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}]
        )
        assert reply.choices[0].message.content == "echo: ping"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_unknown_command_exits_2(run_cli: InProcessCli) -> None:
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert "unknown command" in result.stderr


def _run_example(
    name: str, *args: str, cwd: Path | None = None, here: InProcessCli | None = None
) -> subprocess.CompletedProcess[str] | CliResult:
    """Run ``examples/<name>`` without any OPENAI_* variable: it runs on the fake server.

    In a process of its own, ``python examples/<name>``; in this one with `here`.
    """
    result: subprocess.CompletedProcess[str] | CliResult
    if here is not None:
        result = here.script(ROOT / "examples" / name, *args, cwd=cwd)
    else:
        result = subprocess.run(
            [sys.executable, str(ROOT / "examples" / name), *args],
            env=_env_without_keys(),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "using the bundled fake server" in result.stdout
    assert "sk-fake-" not in result.stdout + result.stderr  # keys shown masked
    return result


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Content and modification time of every output file, the toolkit's state excluded."""
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file() and ".openai-parallel-toolkit" not in path.parts
    }


def test_file_processing_runs_then_resumes(run_cli: InProcessCli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    articles = ROOT / "examples" / "data" / "articles"
    inputs = sorted(str(p.relative_to(articles)) for p in articles.rglob("*.json"))
    assert len(inputs) >= 5 and "science/tides.json" in inputs

    first = _run_example("file_processing.py", "--output", str(out), cwd=tmp_path)
    assert f"processed {len(inputs)}, skipped 0 (already done), failed 0" in first.stdout
    assert f"{len(inputs)} output files in {out}:" in first.stdout
    assert "  science/tides.json\n" in first.stdout  # sub-folders mirrored
    assert 'science/tides.json: {"result": "echo: Tides rise' in first.stdout
    assert "Run the same command again" in first.stdout
    for name in inputs:
        text = json.loads((articles / name).read_text(encoding="utf-8"))["text"]
        assert json.loads((out / name).read_text(encoding="utf-8")) == {"result": "echo: " + text}
    before = _snapshot(out)
    assert sorted(before) == inputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing written elsewhere

    second = _run_example("file_processing.py", "--output", str(out), cwd=tmp_path, here=run_cli)
    assert f"processed 0, skipped {len(inputs)} (already done), failed 0" in second.stdout
    assert f"Resume: all {len(inputs)} files were already done" in second.stdout
    assert _snapshot(out) == before


def test_multi_process_one_example_keeps_order_and_returns_the_failure() -> None:
    result = _run_example("multi_process_one_example.py")
    expected = [f"'hello{i}', 'world' -> 'echo: world'" for i in range(1, 6)] + [
        "item 0 -> 'echo: What colour is the sky?'",
        "item 1 failed: RequestFailedError: request failed: HTTP 400 context_length_exceeded",
        "item 2 -> 'echo: What colour is grass?'",
    ]
    positions = [result.stdout.find(line) for line in expected]
    assert -1 not in positions, result.stdout
    assert positions == sorted(positions)


def test_custom_model_fills_parameters_in_order_and_caches() -> None:
    result = _run_example("custom_model.py")
    expected = [
        "echo: Translate into Dutch: Good morning!",
        "French: 'Where is the railway station?' -> "
        "'echo: Translate into French: Where is the railway station?'",
        "Spanish: 'Two coffees, please.' -> 'echo: Translate into Spanish: Two coffees, please.'",
        "German: 'Thank you for your help.' -> "
        "'echo: Translate into German: Thank you for your help.'",
        "Italian: 'The meeting starts at nine.' -> "
        "'echo: Translate into Italian: The meeting starts at nine.'",
        "Same batch again: 4 results, 0 requests sent, 4 from the cache",
    ]
    positions = [result.stdout.find(line) for line in expected]
    assert -1 not in positions, result.stdout
    assert positions == sorted(positions)


def _split_report(stdout: str) -> tuple[int, int, list[int], int]:
    """(piece limit, piece count, tokens per piece, result count) from split_long_text's output."""
    head = re.search(r"-> (\d+) pieces of at most (\d+) tokens", stdout)
    counts = re.search(r"tokens per piece: ([\d, ]+)\n", stdout)
    results = re.search(r"(\d+) results joined in order", stdout)
    assert head and counts and results, stdout
    tokens = [int(n) for n in counts.group(1).split(", ")]
    return int(head.group(2)), int(head.group(1)), tokens, int(results.group(1))


def test_split_long_text_default(run_cli: InProcessCli) -> None:
    result = _run_example("split_long_text.py", here=run_cli)
    limit, pieces, tokens, results = _split_report(result.stdout)
    assert pieces == len(tokens) == results >= 5
    assert max(tokens) <= limit == 400
    assert "It starts:\necho: " in result.stdout


def test_split_long_text_keeps_the_order_of_the_pieces(
    run_cli: InProcessCli, tmp_path: Path
) -> None:
    text_file = tmp_path / "text.txt"
    text_file.write_text("".join(f"Sentence {i} is here. " for i in range(200)), encoding="utf-8")
    result = _run_example(
        "split_long_text.py", "--text", str(text_file), "--tokens", "20", here=run_cli
    )
    limit, pieces, tokens, results = _split_report(result.stdout)
    assert pieces == len(tokens) == results > 20
    assert max(tokens) <= limit == 20
    start = result.stdout.split("It starts:\n", 1)[1]
    assert start.startswith("echo: Sentence 0 is here.")
    assert "\n\necho: " in start  # several results, joined in order:
    numbers = [int(n) for n in re.findall(r"Sentence (\d+)", start)]
    assert numbers == list(range(len(numbers))) and len(numbers) > 5


def test_split_long_text_runs_without_any_tiktoken_variable(tmp_path: Path) -> None:
    """It exited 1 until TIKTOKEN_CACHE_DIR was set (issue 13): the offline extra suffices."""
    env = {
        k: v
        for k, v in _env_without_keys().items()
        if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")
    }
    env |= {"TMPDIR": str(tmp_path), "HTTPS_PROXY": "http://127.0.0.1:9"}  # no way out
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "split_long_text.py"), "--tokens", "300"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "results joined in order" in result.stdout
    assert "tiktoken" not in result.stderr and "urllib3" not in result.stderr


def test_readme_config_for_the_fake_server_works(run_cli: InProcessCli, tmp_path: Path) -> None:
    """The README shows a config.json pointing at `openai-parallel-toolkit fake-server`."""
    from openai_parallel_toolkit.testing import FakeOpenAIServer

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = re.search(r"openai-parallel-toolkit fake-server --port (\d+) --keys (\S+)", readme)
    block = re.search(
        r"```json\n(\{[^`]*\"api_base\": \"http://127\.0\.0\.1:\d+/v1\"\})\n```", readme
    )
    assert command and block, "README: no config for the fake server"
    config = json.loads(block.group(1))
    keys = command.group(2).split(",")
    assert config["api_keys"] == keys
    assert config["api_base"] == f"http://127.0.0.1:{command.group(1)}/v1"
    assert 'pip install ".[' not in readme  # -e keeps the test set-up's editable install
    with FakeOpenAIServer(keys=keys) as server:
        config["api_base"] = server.base_url  # the same file, on a free port
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        result = run_cli("keys", "check", "--config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("works") == len(keys)
