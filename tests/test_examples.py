"""The README's entry points run end to end: the quick-start job and the command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import openai

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
    process = subprocess.Popen(
        [sys.executable, "-m", "openai_parallel_toolkit", "fake-server", "--port", "0"],
        env=_env_without_keys(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
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


def test_unknown_command_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "openai_parallel_toolkit", "no-such-command"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown command" in result.stderr
