"""The command line itself: usage, logging, stdin/stdout, status output, timeouts, keys check.

Commands run in-process through the command's entry point (the `run_cli` fixture) against the
fake server on 127.0.0.1; the progress bar test runs a real process on a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import pty
import struct
import sys
import termios
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import forked
import pytest
from conftest import InProcessCli

import openai_parallel_toolkit
from openai_parallel_toolkit import APIKeyManager, PoolOptions
from openai_parallel_toolkit.asgi import BackgroundServer
from openai_parallel_toolkit.cli import check_keys
from openai_parallel_toolkit.config import KeyConfig, config_from_mapping
from openai_parallel_toolkit.errors import ConfigError
from openai_parallel_toolkit.jobs import run_jsonl_job
from openai_parallel_toolkit.testing import FakeOpenAIServer

KEYS = ["sk-cli-aaaaaaaaaaaaaaaa0001", "sk-cli-aaaaaaaaaaaaaaaa0002"]
BAD_LINE = "{not json"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(keys=KEYS, seed=3) as fake:
        yield fake


def write_config(path: Path, server: FakeOpenAIServer, **extra: Any) -> Path:
    path.write_text(json.dumps({"api_keys": KEYS, "api_base": server.base_url, **extra}))
    return path


@pytest.fixture
def config(server: FakeOpenAIServer, tmp_path: Path) -> Path:
    return write_config(tmp_path / "keys.json", server)


def request_lines(count: int, bad: bool = False) -> str:
    lines = [
        json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]})
        for i in range(count)
    ]
    return "\n".join([*lines, *([BAD_LINE] if bad else [])]) + "\n"


# --- usage -------------------------------------------------------------------------------------


def test_version(run_cli: InProcessCli) -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"openai-parallel-toolkit {openai_parallel_toolkit.__version__}"


def test_no_arguments_prints_usage_to_stderr(run_cli: InProcessCli) -> None:
    result = run_cli()
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("usage: openai-parallel-toolkit")
    assert "keys check" in result.stderr and "tiktoken-cache" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["run", "--help"],
        ["keys", "--help"],
        ["keys", "check", "--help"],
        ["batch", "--help"],
    ],
)
def test_help_is_plain_text(run_cli: InProcessCli, args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 0 and "usage:" in result.stdout
    assert "`" not in result.stdout and ":func:" not in result.stdout


def test_unknown_command_is_one_line(run_cli: InProcessCli) -> None:
    result = run_cli("frobnicate")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "unknown command 'frobnicate'" in result.stderr


@pytest.mark.parametrize("threads", ["-1", "0", "many"])
def test_threads_below_one_is_a_one_line_usage_error(
    run_cli: InProcessCli, threads: str, tmp_path: Path
) -> None:
    requests = tmp_path / "r.jsonl"
    requests.write_text(request_lines(1))
    result = run_cli("run", str(requests), "-o", str(tmp_path / "o.jsonl"), "--threads", threads)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "--threads" in result.stderr and ">= 1" in result.stderr
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("option", ["--timeout", "--status-interval"])
@pytest.mark.parametrize("value", ["0", "-3", "soon", "inf"])
def test_seconds_must_be_positive(
    run_cli: InProcessCli, option: str, value: str, tmp_path: Path
) -> None:
    result = run_cli("run", "in.jsonl", "-o", str(tmp_path / "o.jsonl"), option, value)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert option in result.stderr


def test_directory_as_input_says_so(run_cli: InProcessCli, config: Path, tmp_path: Path) -> None:
    result = run_cli("run", str(tmp_path), "-o", str(tmp_path / "o.jsonl"), "--config", str(config))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "is a directory" in result.stderr


# --- logging -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["-q"], ["-v"], ["--log-level", "info"], ["-vv"]])
def test_each_bad_line_is_reported_once_at_every_log_level(
    run_cli: InProcessCli, flags: list[str], config: Path, tmp_path: Path
) -> None:
    requests = tmp_path / "r.jsonl"
    requests.write_text(request_lines(2, bad=True))
    result = run_cli("run", str(requests), "-o", str(tmp_path / "o.jsonl"), "--config", str(config),
                 "--no-progress", *flags)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("line 3: not valid JSON") == 1, result.stderr
    verbose = bool(flags) and flags != ["-q"]
    assert ("INFO: key pool from" in result.stderr) is verbose


def test_logging_options_before_the_command(
    run_cli: InProcessCli, config: Path, tmp_path: Path
) -> None:
    requests = tmp_path / "r.jsonl"
    requests.write_text(request_lines(1))
    result = run_cli("-v", "run", str(requests), "-o", str(tmp_path / "o.jsonl"),
                 "--config", str(config), "--no-progress")  # fmt: skip
    assert result.returncode == 0 and "INFO: key pool from" in result.stderr


def test_the_library_never_configures_logging(config: Path, tmp_path: Path) -> None:
    requests = tmp_path / "r.jsonl"
    requests.write_text(request_lines(2, bad=True))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with APIKeyManager(config_path=config, make_default=False) as manager:
        summary = run_jsonl_job(requests, tmp_path / "o.jsonl", manager=manager, progress=False)
    assert summary.done == 2 and len(summary.malformed) == 1
    assert root.handlers == handlers and root.level == level


# --- stdin and stdout --------------------------------------------------------------------------


def test_stdin_to_stdout(run_cli: InProcessCli, config: Path, tmp_path: Path) -> None:
    result = run_cli("run", "-", "-o", "-", "--config", str(config),
                 stdin=request_lines(3, bad=True), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stderr  # the bad line
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["id"] for r in records) == [1, 2, 3]
    assert all("response" in r for r in records)
    assert "stdout: done 3" in result.stderr and "line 4: not valid JSON" in result.stderr
    assert "status:" in result.stderr  # progress and summary on stderr, never on stdout
    assert list(tmp_path.iterdir()) == [config]  # nothing written beside


def test_stdin_to_a_file_resumes(
    run_cli: InProcessCli, server: FakeOpenAIServer, config: Path, tmp_path: Path
) -> None:
    output = tmp_path / "o.jsonl"
    first = run_cli("run", "-", "-o", str(output), "--config", str(config), stdin=request_lines(3))
    assert first.returncode == 0, first.stderr
    server.reset_counters()
    again = run_cli("run", "-", "-o", str(output), "--config", str(config), stdin=request_lines(4))
    assert again.returncode == 0, again.stderr
    assert "skipped 3" in again.stderr and server.total().requests == 1
    assert sorted(json.loads(line)["id"] for line in output.read_text().splitlines()) == [
        1,
        2,
        3,
        4,
    ]


def test_stdin_errors_name_stdin_not_a_temporary_file(
    run_cli: InProcessCli, config: Path, tmp_path: Path
) -> None:
    output = tmp_path / "o.jsonl"
    assert run_cli("run", "-", "-o", str(output), "--config", str(config),
               stdin=request_lines(2)).returncode == 0  # fmt: skip
    other = "\n".join(json.dumps({"model": "m", "prompt": f"other {i}"}) for i in range(2))
    result = run_cli("run", "-", "-o", str(output), "--config", str(config), stdin=other + "\n")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "of stdin" in result.stderr and "opt-run-" not in result.stderr


def test_ordered_copy_needs_an_output_file(run_cli: InProcessCli, config: Path) -> None:
    result = run_cli("run", "-", "-o", "-", "--ordered", "--config", str(config), stdin="")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--ordered" in result.stderr


# --- progress and status -----------------------------------------------------------------------


def test_status_lines_when_stderr_is_not_a_terminal(run_cli: InProcessCli, tmp_path: Path) -> None:
    # Each reply takes 0.2 s and one request is in flight at a time, so the run lasts at
    # least 0.4 s: a status line every 0.01 s gives periodic lines before the final one.
    with FakeOpenAIServer(keys=KEYS, latency=0.2) as slow:
        config = write_config(tmp_path / "keys.json", slow)
        requests = tmp_path / "r.jsonl"
        requests.write_text(request_lines(2))
        result = run_cli("run", str(requests), "-o", str(tmp_path / "o.jsonl"),
                     "--config", str(config), "--threads", "1",
                     "--status-interval", "0.01")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "it/s" not in result.stderr
    status = [line for line in result.stderr.splitlines() if line.startswith("status: ")]
    assert len(status) >= 2
    assert status[-1].startswith("status: 2/2 requests finished, 0 failed,")
    assert "req/s" in status[-1] and "rate-limited (429)" in status[-1]


def test_no_progress_means_no_status_lines(
    run_cli: InProcessCli, config: Path, tmp_path: Path
) -> None:
    requests = tmp_path / "r.jsonl"
    requests.write_text(request_lines(2))
    result = run_cli("run", str(requests), "-o", str(tmp_path / "o.jsonl"),
                 "--config", str(config), "--no-progress")  # fmt: skip
    assert result.returncode == 0 and "status:" not in result.stderr


def test_progress_bar_on_a_terminal(config: Path, tmp_path: Path) -> None:
    requests = tmp_path / "r.jsonl"
    requests.write_text(request_lines(3))
    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns
    process = forked.Popen(  # a process of its own, with the terminal as its stderr
        [sys.executable, "-m", "openai_parallel_toolkit", "run", str(requests),
         "-o", str(tmp_path / "o.jsonl"), "--config", str(config)],
        stdin=forked.DEVNULL, stdout=forked.DEVNULL, stderr=child, env=_env(),
    )  # fmt: skip
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(parent, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(parent)
    assert process.wait(timeout=60) == 0
    shown = b"".join(chunks).decode()
    assert "requests: 100%" in shown and "3/3" in shown
    assert "tok_s=" in shown and "r429=0" in shown and "cost=$" in shown and "keys=" in shown
    assert "status:" not in shown


# --- timeouts ----------------------------------------------------------------------------------


def test_timeout_option_retries_a_slow_request(
    run_cli: InProcessCli, server: FakeOpenAIServer, config: Path, tmp_path: Path
) -> None:
    server.slow_seconds = 10.0
    server.set_fault("*", "slow", times=1)  # the first request hangs; the retry is answered
    requests = tmp_path / "r.jsonl"
    requests.write_text(request_lines(1))
    result = run_cli("run", str(requests), "-o", str(tmp_path / "o.jsonl"), "--config", str(config),
                 "--timeout", "0.5", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert server.total().requests == 2 and server.total().successes == 1


def test_config_timeout_is_used_by_the_pool(
    run_cli: InProcessCli, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "keys.yaml", server, timeout=0.5)
    server.slow_seconds = 10.0
    server.set_fault("*", "slow", times=1)
    requests = tmp_path / "r.jsonl"
    requests.write_text(request_lines(1))
    result = run_cli("run", str(requests), "-o", str(tmp_path / "o.jsonl"), "--config", str(config),
                 "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert server.total().requests == 2 and server.total().successes == 1


def test_config_timeout_top_level_and_per_key() -> None:
    config = config_from_mapping(
        {"api_keys": [KEYS[0], {"api_key": KEYS[1], "timeout": 5}], "timeout": 0.5},
        source="k.yaml",
    )
    assert [key.timeout for key in config.keys] == [0.5, 5.0]
    assert config_from_mapping({"api_keys": [KEYS[0]]}).keys[0].timeout is None
    assert "timeout=0.5" in repr(config.keys[0])
    with APIKeyManager(
        config=config, make_default=False, options=PoolOptions(timeout=60)
    ) as manager:
        timeouts = {}
        for _ in range(2):
            lease = manager.acquire()
            timeouts[lease.key_config.api_key] = lease.client.timeout
            lease.cancel()
    assert timeouts == {KEYS[0]: 0.5, KEYS[1]: 5.0}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"api_keys": [KEYS[0]], "timeout": 0}, "timeout"),
        ({"api_keys": [KEYS[0]], "timeout": -1}, "timeout"),
        ({"api_keys": [KEYS[0]], "timeout": "30"}, "timeout"),
        ({"api_keys": [KEYS[0]], "timeout": True}, "timeout"),
        ({"api_keys": [{"api_key": KEYS[0], "timeout": float("inf")}]}, "api_keys[0].timeout"),
    ],
)
def test_bad_timeout_names_file_and_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping(data, source="k.yaml")
    assert caught.value.source == "k.yaml" and caught.value.field == field


# --- keys check --------------------------------------------------------------------------------


def _barrier_app(app: Any, parties: int, limit: float) -> Any:
    """`app`, holding every request until `parties` requests have arrived (or `limit` s passed)."""
    arrived = 0
    everyone: asyncio.Event | None = None

    async def held(scope: Any, receive: Any, send: Any) -> None:
        nonlocal arrived, everyone
        if scope["type"] == "http":
            everyone = everyone or asyncio.Event()
            arrived += 1
            if arrived >= parties:
                everyone.set()
            # Checked one after another, the first check times out meanwhile.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(everyone.wait(), limit)
        await app(scope, receive, send)

    return held


def test_keys_are_checked_at_the_same_time() -> None:
    keys = [f"sk-check-aaaaaaaaaaaaaa000{i}" for i in range(1, 5)]
    fake = FakeOpenAIServer(keys=keys)
    # No answer is sent before all four requests arrived: checked one after another, the
    # first key would time out waiting for the others.
    runner = BackgroundServer(_barrier_app(fake.app, parties=4, limit=30), name="barrier")
    runner.start()
    try:
        configs = [KeyConfig(api_key=key, api_base=f"{runner.url}/v1") for key in keys]
        checks = check_keys(configs, model="gpt-4o-mini", timeout=10)
    finally:
        runner.stop()
    assert [check.reason for check in checks] == ["works"] * 4
    assert [check.key for check in checks] == [config.masked_key for config in configs]
    assert fake.total().requests == 4


def test_keys_check_with_latency_checks_every_key_at_once() -> None:
    keys = [f"sk-check-aaaaaaaaaaaaaa000{i}" for i in range(1, 5)]
    with FakeOpenAIServer(keys=keys, latency=1.0) as fake:
        configs = [KeyConfig(api_key=key, api_base=fake.base_url) for key in keys]
        checks = check_keys(configs, model="gpt-4o-mini")
    assert all(check.ok for check in checks)
    # Each reply is held 1 s: all four checks were waiting on the server at the same time,
    # one request per key (one after another, never more than one would be).
    assert fake.peak_in_flight() == 4
    assert all(fake.peak_in_flight(key) == 1 for key in keys)
    assert fake.total().requests == 4


def test_keys_check_timeout_option_and_per_key_timeout(
    run_cli: InProcessCli, tmp_path: Path
) -> None:
    keys = [f"sk-check-aaaaaaaaaaaaaa000{i}" for i in range(1, 3)]
    with FakeOpenAIServer(keys=keys) as fake:
        fake.slow_seconds = 10.0
        fake.set_fault("*", "slow")  # every request hangs for 10 s
        path = tmp_path / "keys.yaml"
        path.write_text(
            f"api_base: {fake.base_url}\ntimeout: 0.3\n"
            f"api_keys:\n  - {keys[0]}\n  - api_key: {keys[1]}\n    timeout: 0.2\n"
        )
        from_config = run_cli("keys", "check", "--config", str(path))
        from_option = run_cli("keys", "check", "--config", str(path), "--timeout", "0.25")
    for result in (from_config, from_option):
        assert result.returncode == 1
        lines = [line for line in result.stdout.splitlines() if line.startswith("sk-")]
        assert len(lines) == 2 and all("timed out" in line for line in lines), result.stdout
